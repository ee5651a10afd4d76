"""torch_xla on demand, and the collectives of the XLA strategies (``torch_xla.core.xla_model`` underneath).

torch_xla is imported only when one of these functions runs: never at import, and never before the XLA launcher
started its processes (touching the runtime in the launching process would keep the devices from the children).
"""

from __future__ import annotations

import importlib
import pickle
import sys
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from fabric_utils import TORCH_XLA, MissingDependencyError, apply_to_collection, check_reduce_op, xla_available

#: the ``xm.REDUCE_*`` constant for each reduction (``mean`` is a sum divided by the number of processes)
_REDUCE_TYPES = {
    "sum": "REDUCE_SUM",
    "mean": "REDUCE_SUM",
    "product": "REDUCE_MUL",
    "min": "REDUCE_MIN",
    "max": "REDUCE_MAX",
}


def require_xla(feature: str) -> None:
    """Raise the install hint when torch_xla is missing, without importing it."""
    if not xla_available():
        raise MissingDependencyError(
            f"{feature} requires `{TORCH_XLA.distribution}`, which is not installed. Run: {TORCH_XLA.install}"
        )


def xla_module(name: str = "") -> ModuleType:
    """``torch_xla`` or one of its submodules (``"core.xla_model"``, ``"runtime"``, ...), imported now."""
    TORCH_XLA.require("the XLA strategies")
    return importlib.import_module("torch_xla" + (f".{name}" if name else ""))


def xla_model() -> ModuleType:
    return xla_module("core.xla_model")


def xla_runtime() -> ModuleType:
    return xla_module("runtime")


def xla_device(index: int | None = None) -> torch.device:
    """This process's XLA device, or the one of ``index`` (``torch_xla.device``; ``xm.xla_device`` before 2.5)."""
    device = getattr(xla_module(), "device", None)
    if callable(device):
        return torch.device(device(index))
    return torch.device(xla_model().xla_device(index))


def sync() -> None:
    """Execute the pending lazy graph (``torch_xla.sync()``; ``xm.mark_step()`` on older torch_xla)."""
    step = getattr(xla_module(), "sync", None)
    if callable(step):
        step()
    else:
        xla_model().mark_step()


def is_interactive() -> bool:
    """A notebook or the REPL: processes must be forked there (nothing can be imported from ``__main__``)."""
    return hasattr(sys, "ps1") or bool(sys.flags.interactive)


# -- collectives ---------------------------------------------------------------------------------------------------
def group_size(world_size: int, groups: list[list[int]] | None) -> int:
    """The number of processes a collective over ``groups`` (XLA replica groups, all of one size) combines."""
    return len(groups[0]) if groups else world_size


def all_reduce(tensor: Tensor, reduce_op: Any, world_size: int, groups: list[list[int]] | None = None) -> Tensor:
    """Reduce ``tensor`` across processes; ``mean`` divides the sum by the group size."""
    name = check_reduce_op(reduce_op)
    xm = xla_model()
    kwargs: dict[str, Any] = {} if groups is None else {"groups": groups}
    result = xm.all_reduce(getattr(xm, _REDUCE_TYPES[name]), tensor, **kwargs)
    if name == "mean":
        result = result / group_size(world_size, groups)
    return result  # type: ignore[no-any-return]


def _gather(tensor: Tensor, sync_grads: bool, groups: list[list[int]] | None) -> Tensor:
    """Concatenate every process's ``tensor`` along dim 0 (differentiably with ``sync_grads``)."""
    kwargs: dict[str, Any] = {} if groups is None else {"groups": groups}
    if sync_grads:
        return xla_module("core.functions").all_gather(tensor, dim=0, **kwargs)  # type: ignore[no-any-return]
    return xla_model().all_gather(tensor, dim=0, **kwargs)  # type: ignore[no-any-return]


def all_gather(
    tensor: Tensor, world_size: int, *, sync_grads: bool = False, groups: list[list[int]] | None = None
) -> Tensor | list[Tensor]:
    """Every process's ``tensor``, stacked along a new first dimension; a list of them when their shapes differ.

    The shapes are exchanged first (XLA collectives need equal shapes): tensors of another shape are sent flattened
    and padded to the largest, then cut back.
    """
    size = group_size(world_size, groups)
    device = tensor.device
    dims = _gather(torch.tensor([tensor.dim()], device=device), False, groups).tolist()
    shape = list(tensor.shape) + [-1] * (max(dims) - tensor.dim())  # padded to the largest number of dimensions
    rows = _gather(torch.tensor([shape], dtype=torch.int64, device=device), False, groups).tolist()
    shapes = [row[: int(n)] for row, n in zip(rows, dims)]
    if all(s == shapes[0] for s in shapes):
        return _gather(tensor.unsqueeze(0), sync_grads, groups)
    numels = [int(torch.Size(s).numel()) for s in shapes]
    flat = tensor.reshape(1, -1)
    padded = torch.nn.functional.pad(flat, (0, max(numels) - flat.shape[1]))
    gathered = _gather(padded, sync_grads, groups)
    return [gathered[i, : numels[i]].reshape(shapes[i]) for i in range(size)]


def broadcast_object(obj: Any, src: int, rank: int, device: torch.device) -> Any:
    """``obj`` as given on rank ``src``, on every rank (pickled; tensors travel through the CPU).

    Ranks other than ``src`` get the tensors in the object on ``device``.
    """
    xm = xla_model()
    payload = b""
    if rank == src:
        payload = pickle.dumps(apply_to_collection(obj, Tensor, lambda t: t.detach().cpu()))
    length = torch.tensor([len(payload)], dtype=torch.int32, device=device)
    xm.collective_broadcast([length], root_ordinal=src)
    if rank == src:  # int32: integer collectives of every XLA backend handle it
        data = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device=device, dtype=torch.int32)
    else:
        data = torch.zeros(int(length.item()), dtype=torch.int32, device=device)
    xm.collective_broadcast([data], root_ordinal=src)
    if rank == src:
        return obj
    received = pickle.loads(bytes(data.cpu().to(torch.uint8).contiguous().untyped_storage()))
    return apply_to_collection(received, Tensor, lambda t: t.to(device))


def barrier(name: str | None) -> None:
    """Wait until every process reached the rendezvous ``name``."""
    xla_model().rendezvous(name or "fabric-barrier")
