"""Reading a checkpoint for a strategy that holds full tensors: a file, or a sharded (DCP) directory read whole.

Apart from ``checkpoint.py`` because it reaches up to the FSDP reader (imported only for such a directory), which
itself builds on ``checkpoint.py``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch.nn import Module
from torch.optim import Optimizer

from fabric_io import is_remote_path, is_sharded_checkpoint
from fabric_strategies.checkpoint import CheckpointingStrategy, LoadTarget, loading
from fabric_utils import PathLike


def read_checkpoint(
    strategy: CheckpointingStrategy,
    path: PathLike,
    state: LoadTarget,
    weights_only: bool,
) -> dict[str, Any]:
    """The checkpoint at ``path`` for a strategy that holds full tensors (single device, DDP, DP): a file through
    the strategy's checkpoint IO, or a sharded (DCP) directory that FSDP or ModelParallel wrote, at any world size.

    A sharded directory is read whole by this process alone (``collective=False``), each tensor in full, with
    ``weights_only`` honoured; optimizer states, which it keys by parameter name, are keyed by index again for the
    optimizers of ``state`` (their parameters' names come from the modules of ``state``).
    """
    if is_remote_path(path) or not (os.path.isdir(os.fspath(path)) or is_sharded_checkpoint(path)):
        return strategy.checkpoint_io.load_checkpoint(path, map_location="cpu", weights_only=weights_only)
    if isinstance(state, Optimizer):
        raise TypeError(
            f"{os.fspath(path)!r} is a sharded checkpoint directory, which keys optimizer state by parameter name:"
            " load the optimizer together with its module, e.g. load(path, {'model': model, 'optimizer': optimizer})"
        )
    from fabric_strategies.fsdp.dcp_io import read_sharded_checkpoint  # DCP is imported only for such a directory

    checkpoint = read_sharded_checkpoint(path, weights_only=weights_only)
    if isinstance(state, dict):
        modules = [obj for obj in state.values() if isinstance(obj, Module)]
        for key, obj in state.items():
            if isinstance(obj, Optimizer) and isinstance(checkpoint.get(key), Mapping):
                with loading(path, key):
                    checkpoint[key] = _indexed_optimizer_state(checkpoint[key], obj, modules)
    return checkpoint


def _indexed_optimizer_state(saved: Mapping[str, Any], optimizer: Optimizer, modules: list[Module]) -> dict[str, Any]:
    """A name-keyed optimizer state (``torch.distributed.checkpoint.state_dict`` layout) in ``optimizer``'s own
    layout: parameters numbered in the order of its parameter groups."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    wanted = {id(p) for p in params}
    owner = next((m for m in modules if wanted <= {id(p) for p in m.parameters()}), None)
    if owner is None:
        raise ValueError(
            "The sharded checkpoint keys this optimizer's state by parameter name: put the module whose parameters it"
            " updates in the same state, e.g. {'model': model, 'optimizer': optimizer}."
        )
    names = {id(p): name for name, p in owner.named_parameters()}
    index = {names[id(p)]: i for i, p in enumerate(params)}
    unknown = sorted({str(name) for group in saved.get("param_groups", []) for name in group["params"]} - set(index))
    if unknown:
        raise KeyError(f"the checkpoint's optimizer updates parameters {unknown} that this optimizer does not hold")
    return {
        "state": {index[name]: value for name, value in saved.get("state", {}).items() if name in index},
        "param_groups": [
            {**group, "params": [index[name] for name in group["params"]]} for group in saved.get("param_groups", [])
        ],
    }
