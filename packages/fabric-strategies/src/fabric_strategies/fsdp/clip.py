"""Gradient-norm clipping for parameters that are DTensors (FSDP2 shards, tensor-parallel pieces) or plain tensors.

Each process holds only its shard of a DTensor gradient, so a local norm is not the norm. The gradients are grouped
by device mesh and placements; each group's norm is computed as a DTensor (partial per shard) and reduced to the
full value with one collective per group, then the groups' norms are combined. Gradients replicated across a mesh
dimension (HSDP, ``NO_SHARD``) are counted once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.nn import Parameter

from fabric_utils import check_norm_type


def _group_key(grad: Tensor) -> Any:
    from torch.distributed.tensor import DTensor

    if isinstance(grad, DTensor):
        return (grad.device_mesh, tuple(grad.placements), grad.device)
    return (None, (), grad.device)


def total_grad_norm(parameters: Iterable[Parameter], norm_type: float | int | str, device: torch.device) -> Tensor:
    """The ``norm_type``-norm of all gradients of ``parameters`` together, as a plain tensor on ``device``.

    Collective when some gradients are DTensors: every process of their mesh must call it.
    """
    norm_type = float(norm_type)
    groups: dict[Any, list[Tensor]] = {}
    for parameter in parameters:
        if parameter.grad is not None:
            groups.setdefault(_group_key(parameter.grad), []).append(parameter.grad.detach())
    if not groups:
        return torch.tensor(0.0, device=device)
    norms = [_group_norm(grads, norm_type).to(device) for grads in groups.values()]
    if len(norms) == 1:
        return norms[0]
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


def _group_norm(grads: list[Tensor], norm_type: float) -> Tensor:
    from torch.distributed.tensor import DTensor

    per_tensor = [torch.linalg.vector_norm(grad, norm_type, dtype=torch.float32) for grad in grads]
    norm = per_tensor[0] if len(per_tensor) == 1 else torch.linalg.vector_norm(torch.stack(per_tensor), norm_type)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def clip_grad_norm(
    parameters: Iterable[Parameter],
    max_norm: float | int,
    norm_type: float | int | str = 2.0,
    error_if_nonfinite: bool = True,
    device: torch.device | None = None,
) -> Tensor:
    """Scale the gradients of ``parameters`` so that their total norm is at most ``max_norm``; return the total norm
    from before clipping (a plain tensor, equal on every process).

    With ``error_if_nonfinite=True`` a NaN or infinite total norm raises ``RuntimeError`` on every process (they
    all see the same norm) and leaves the gradients untouched.
    """
    _check_non_negative("max_norm", max_norm)
    check_norm_type(norm_type, caller="clip_grad_norm")
    parameters = [p for p in parameters if p.grad is not None]
    if device is None:
        device = parameters[0].grad.device if parameters else torch.device("cpu")  # type: ignore[union-attr]
    total = total_grad_norm(parameters, norm_type, device)
    if error_if_nonfinite and not bool(torch.isfinite(total)):
        raise RuntimeError(
            f"The total norm of order {float(norm_type)} of the gradients is {total.item()}, which is not finite, so"
            " they cannot be clipped. Pass error_if_nonfinite=False to clip anyway (the gradients then become NaN)."
        )
    if parameters:
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return total


def _check_non_negative(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
