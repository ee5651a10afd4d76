"""Tensor-level collectives with the semantics strategies offer users (results are new tensors, never in place)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from fabric_utils import check_reduce_op

# shape header for the first exchange of ``all_gather``: the number of dims, then up to this many sizes
_HEADER_DIMS = 8

_REDUCE_OPS = {"sum": "SUM", "min": "MIN", "max": "MAX", "product": "PRODUCT"}


def distributed_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def group_size(group: Any | None = None) -> int:
    """How many processes take part in a collective over ``group``: 1 when no process group is set up."""
    return dist.get_world_size(group) if distributed_ready() else 1


def _mean_dtype(tensor: Tensor) -> Tensor:
    # the mean of integers is not an integer: int64 becomes float64 (exact up to 2**53), smaller ints float32
    if tensor.is_floating_point() or tensor.is_complex():
        return tensor
    return tensor.double() if tensor.dtype == torch.int64 else tensor.float()


def local_reduce(tensor: Tensor, reduce_op: Any = "mean") -> Tensor:
    """What ``all_reduce_tensor`` returns when one process takes part: a copy of ``tensor`` of the same shape, and
    the same dtype as with several processes (the mean of integers is floating point)."""
    result = tensor.detach().clone()
    return _mean_dtype(result) if check_reduce_op(reduce_op) == "mean" else result


def all_reduce_tensor(tensor: Tensor, group: Any | None = None, reduce_op: Any = "mean") -> Tensor:
    """Reduce ``tensor`` over ``group`` and return the result; ``tensor`` itself is left unchanged.

    ``reduce_op`` is a name (``mean``/``avg``, ``sum``, ``min``, ``max``, ``product``) or a ``ReduceOp``; "mean" of
    integer tensors comes back as floating point, with one process too.
    """
    if group_size(group) == 1:
        return local_reduce(tensor, reduce_op)
    name = check_reduce_op(reduce_op)
    result = tensor.detach().clone()
    if not isinstance(reduce_op, str):
        dist.all_reduce(result, op=reduce_op, group=group)
        return result
    if name == "mean":
        result = _mean_dtype(result)
        dist.all_reduce(result, op=dist.ReduceOp.SUM, group=group)
        return result.div_(dist.get_world_size(group))
    dist.all_reduce(result, op=getattr(dist.ReduceOp, _REDUCE_OPS[name]), group=group)
    return result


def _local_shape_header(tensor: Tensor) -> Tensor:
    header = torch.full((1 + _HEADER_DIMS,), -1, dtype=torch.int64, device=tensor.device)
    header[0] = tensor.dim()
    dims = list(tensor.shape)[:_HEADER_DIMS]
    if dims:
        header[1 : 1 + len(dims)] = torch.tensor(dims, dtype=torch.int64)
    return header


def gather_shapes(tensor: Tensor, group: Any | None = None) -> list[torch.Size]:
    """The shape of ``tensor`` on every rank of ``group``, in rank order (one small exchange in the usual case)."""
    world_size = dist.get_world_size(group)
    header = _local_shape_header(tensor)
    headers = [torch.empty_like(header) for _ in range(world_size)]
    dist.all_gather(headers, header, group=group)
    ndims = [int(h[0]) for h in headers]
    if max(ndims) <= _HEADER_DIMS:
        return [torch.Size(int(d) for d in h[1 : 1 + n]) for h, n in zip(headers, ndims)]
    # some rank has more dims than the header holds: exchange the full shapes, padded to the largest rank
    longest = max(ndims)
    full = torch.full((longest,), -1, dtype=torch.int64, device=tensor.device)
    if tensor.dim():
        full[: tensor.dim()] = torch.tensor(list(tensor.shape), dtype=torch.int64)
    fulls = [torch.empty_like(full) for _ in range(world_size)]
    dist.all_gather(fulls, full, group=group)
    return [torch.Size(int(d) for d in f[:n]) for f, n in zip(fulls, ndims)]


def _gather_equal(tensor: Tensor, group: Any | None, sync_grads: bool) -> list[Tensor]:
    if sync_grads:
        from torch.distributed.nn.functional import all_gather as differentiable_all_gather

        return list(differentiable_all_gather(tensor, group=group or dist.group.WORLD))
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, tensor, group=group)
    return gathered


def _pad_to(tensor: Tensor, shape: tuple[int, ...]) -> Tensor:
    # F.pad takes (last dim left, last dim right, second-to-last left, ...): pad at the end of each dim
    padding: list[int] = []
    for have, want in reversed(list(zip(tensor.shape, shape))):
        padding += [0, want - have]
    return F.pad(tensor, padding) if any(padding) else tensor


def gather_all_tensors(tensor: Tensor, group: Any | None = None, sync_grads: bool = False) -> list[Tensor]:
    """Every rank's ``tensor`` in rank order, also when the shapes differ across ranks.

    The shapes are exchanged first; tensors of different shapes are padded to a common shape, gathered and trimmed
    back, so no rank waits for data another rank never sends. Tensors whose number of dimensions differs across
    ranks are exchanged as objects.
    """
    tensor = tensor.contiguous()
    shapes = gather_shapes(tensor, group)
    if all(shape == tensor.shape for shape in shapes):
        return _gather_equal(tensor, group, sync_grads)
    if len({len(shape) for shape in shapes}) > 1:
        objects: list[Any] = [None] * len(shapes)
        dist.all_gather_object(objects, tensor.detach().cpu(), group=group)
        return [obj.to(tensor.device) for obj in objects]
    common = tuple(max(sizes) for sizes in zip(*shapes))
    padded = _gather_equal(_pad_to(tensor, common), group, sync_grads)
    return [p[tuple(slice(0, n) for n in shape)] for p, shape in zip(padded, shapes)]


def all_gather_tensor(tensor: Tensor, group: Any | None = None, sync_grads: bool = False) -> Tensor | list[Tensor]:
    """Stack every rank's ``tensor`` along a new first dimension; when shapes differ, return the list instead.

    With one process taking part, ``tensor`` comes back as it is: no dimension of size 1 is added.
    """
    if group_size(group) == 1:
        return tensor
    gathered = gather_all_tensors(tensor, group, sync_grads)
    if all(t.shape == gathered[0].shape for t in gathered):
        return torch.stack(gathered)
    return gathered


def broadcast_object(obj: Any, src: int = 0, group: Any | None = None) -> Any:
    """``obj`` as given on rank ``src`` (any picklable object)."""
    if not distributed_ready():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src, group=group)
    return box[0]
