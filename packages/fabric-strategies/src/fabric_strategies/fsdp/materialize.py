"""Giving a module created on the meta device real storage and initial values, after it was sharded.

``module.to_empty(device)`` allocates only each process's shards. Then every module that defines
``reset_parameters()`` is re-initialised, in ``named_modules()`` order (the order in which a model's submodules are
usually constructed): its DTensor parameters are temporarily replaced by full-size tensors, ``reset_parameters()``
runs on those, and each process keeps its own slice. The values therefore equal those of a model built directly
(not on the meta device) after the same ``torch.manual_seed``, whatever the sharding. Peak extra memory is the
full parameters of one module at a time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module, Parameter


def has_meta_tensors(module: Module) -> bool:
    return any(t.is_meta for t in _tensors(module))


def _tensors(module: Module) -> Iterator[Tensor]:
    yield from module.parameters()
    yield from module.buffers()


def materialize_module(module: Module, device: torch.device) -> list[str]:
    """Allocate ``module``'s meta tensors on ``device`` and initialise them; return the names of the submodules that
    own parameters or buffers but define no ``reset_parameters()`` (their values are left uninitialised).
    """
    module.to_empty(device=device)
    # a Hugging Face model initialises, with its _init_weights(submodule), what has no reset_parameters(): norms and
    # the rotary embedding's buffers (not in the state dict: loading a checkpoint would not fill them)
    init_weights = getattr(module, "_init_weights", None)
    uninitialised = []
    for name, submodule in module.named_modules():
        owns_tensors = any(True for _ in submodule.parameters(recurse=False)) or any(
            True for _ in submodule.buffers(recurse=False)
        )
        reset = getattr(submodule, "reset_parameters", None)
        if not callable(reset):
            if not owns_tensors:
                continue
            if not callable(init_weights):
                uninitialised.append(name or "<root>")
                continue
            reset = functools.partial(init_weights, submodule)
        _reset_with_full_tensors(submodule, reset)
    return uninitialised


def _reset_with_full_tensors(module: Module, reset: Callable[[], Any]) -> None:
    from torch.distributed.tensor import DTensor, distribute_tensor

    sharded: dict[str, Any] = {name: p for name, p in module._parameters.items() if isinstance(p, DTensor)}
    for name, parameter in sharded.items():
        full = torch.empty(parameter.shape, dtype=parameter.dtype, device=parameter.to_local().device)
        module._parameters[name] = Parameter(full, requires_grad=parameter.requires_grad)
    try:
        with torch.no_grad():
            reset()
        full_values = {name: module._parameters[name] for name in sharded}
    finally:
        module._parameters.update(sharded)
    with torch.no_grad():
        for name, parameter in sharded.items():
            value = full_values[name]
            assert value is not None
            # each process slices its own piece of the full tensor (no communication: src_data_rank=None)
            piece = distribute_tensor(value.detach(), parameter.device_mesh, parameter.placements, src_data_rank=None)
            parameter.to_local().copy_(piece.to_local())
