"""Fake ``torch_xla.core.xla_model``: collectives over mirror processes (see the package docstring)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torch_xla import _fake

REDUCE_SUM = "sum"
REDUCE_MUL = "mul"
REDUCE_AND = "and"
REDUCE_OR = "or"
REDUCE_MIN = "min"
REDUCE_MAX = "max"


def xla_device(n: int | None = None, devkind: str | None = None) -> torch.device:
    _fake.record("xla_device", n)
    return torch.device("cpu")


def mark_step() -> None:
    _fake.record("mark_step")


def _reduce(reduce_type: str, tensor: Tensor, scale: float) -> Tensor:
    world = _fake.state.world_size
    if reduce_type == REDUCE_SUM:
        result = tensor * world
    elif reduce_type == REDUCE_MUL:
        result = tensor**world
    elif reduce_type in (REDUCE_MIN, REDUCE_MAX, REDUCE_AND, REDUCE_OR):
        result = tensor.clone()
    else:
        raise ValueError(f"fake torch_xla: unknown reduce type {reduce_type!r}")
    return result * scale if scale != 1.0 else result


def all_reduce(
    reduce_type: str,
    inputs: Tensor | list[Tensor],
    scale: float = 1.0,
    groups: list[list[int]] | None = None,
    pin_layout: bool = True,
) -> Tensor | list[Tensor]:
    _fake.record("all_reduce", {"reduce_type": reduce_type, "groups": groups})
    if isinstance(inputs, Tensor):
        return _reduce(reduce_type, inputs, scale)
    for tensor in inputs:
        tensor.copy_(_reduce(reduce_type, tensor, scale))
    return inputs


def all_gather(
    value: Tensor, dim: int = 0, groups: list[list[int]] | None = None, output: Any = None, pin_layout: bool = True
) -> Tensor:
    _fake.record("all_gather", {"shape": tuple(value.shape), "dim": dim, "groups": groups})
    size = len(groups[0]) if groups else _fake.state.world_size
    return torch.cat([value] * size, dim=dim)


def collective_broadcast(
    tensors: list[Tensor], root_ordinal: int = 0, groups: list[list[int]] | None = None, pin_layout: bool = True
) -> None:
    _fake.record("collective_broadcast", {"root_ordinal": root_ordinal, "shapes": [tuple(t.shape) for t in tensors]})


def rendezvous(tag: str, payload: bytes = b"", replicas: list[int] | None = None) -> list[bytes]:
    _fake.record("rendezvous", tag)
    return [payload] * _fake.state.world_size


def broadcast_master_param(model: torch.nn.Module) -> None:
    _fake.record("broadcast_master_param", model)


def optimizer_step(
    optimizer: Any,
    barrier: bool = False,
    optimizer_args: dict[str, Any] | None = None,
    groups: list[list[int]] | None = None,
    pin_layout: bool = True,
) -> Any:
    """Average the gradients over the (mirror) replicas, which leaves them as they are, then step."""
    _fake.record("optimizer_step", dict(optimizer_args or {}))
    return optimizer.step(**(optimizer_args or {}))
