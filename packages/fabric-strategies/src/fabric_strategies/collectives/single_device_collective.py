"""``SingleDeviceCollective``: the collective of a group with one process. Every primitive is local."""

from __future__ import annotations

from typing import Any

from torch import Tensor
from typing_extensions import Self, override

from fabric_strategies.collectives.base import Collective
from fabric_strategies.collectives.torch_collective import to_native_op


def _check_rank(rank: int | None, role: str) -> None:
    if rank is not None and rank != 0:
        raise ValueError(f"{role}={rank!r} does not exist: a single-device collective has only rank 0")


def _check_list(tensors: list[Tensor] | None, name: str) -> list[Tensor]:
    if tensors is None or len(tensors) != 1:
        got = None if tensors is None else f"{len(tensors)} tensors"
        raise ValueError(f"`{name}` must hold exactly one tensor (world size 1), got {got}")
    return tensors


class SingleDeviceCollective(Collective):
    """Rank 0 of a group of one. Reductions return the input unchanged (the operation is still validated)."""

    @property
    @override
    def rank(self) -> int:
        return 0

    @property
    @override
    def world_size(self) -> int:
        return 1

    @staticmethod
    @override
    def is_available() -> bool:
        return True

    @staticmethod
    @override
    def is_initialized() -> bool:
        return True

    @override
    def setup(self, **kwargs: Any) -> Self:
        return self

    @override
    def create_group(self, **kwargs: Any) -> Self:
        ranks = kwargs.get("ranks")
        if ranks is not None and list(ranks) != [0]:
            raise ValueError(f"ranks={ranks!r} does not exist: a single-device collective has only rank 0")
        return self

    @override
    def teardown(self) -> Self:
        return self

    @override
    def broadcast(self, tensor: Tensor, src: int) -> Tensor:
        _check_rank(src, "src")
        return tensor

    @override
    def all_reduce(self, tensor: Tensor, op: Any = "sum") -> Tensor:
        to_native_op(op)
        return tensor

    @override
    def reduce(self, tensor: Tensor, dst: int, op: Any = "sum") -> Tensor:
        _check_rank(dst, "dst")
        to_native_op(op)
        return tensor

    @override
    def all_gather(self, tensor_list: list[Tensor], tensor: Tensor) -> list[Tensor]:
        _check_list(tensor_list, "tensor_list")[0].copy_(tensor)
        return tensor_list

    @override
    def gather(self, tensor: Tensor, gather_list: list[Tensor] | None = None, dst: int = 0) -> list[Tensor] | None:
        _check_rank(dst, "dst")
        _check_list(gather_list, "gather_list")[0].copy_(tensor)
        return gather_list

    @override
    def scatter(self, tensor: Tensor, scatter_list: list[Tensor] | None = None, src: int = 0) -> Tensor:
        _check_rank(src, "src")
        return tensor.copy_(_check_list(scatter_list, "scatter_list")[0])

    @override
    def reduce_scatter(self, output: Tensor, input_list: list[Tensor], op: Any = "sum") -> Tensor:
        to_native_op(op)
        return output.copy_(_check_list(input_list, "input_list")[0])

    @override
    def all_to_all(self, output_tensor_list: list[Tensor], input_tensor_list: list[Tensor]) -> list[Tensor]:
        _check_list(output_tensor_list, "output_tensor_list")[0].copy_(
            _check_list(input_tensor_list, "input_tensor_list")[0]
        )
        return output_tensor_list

    @override
    def send(self, tensor: Tensor, dst: int, tag: int = 0) -> None:
        raise RuntimeError(f"Cannot send to rank {dst}: a single-device collective has no other rank")

    @override
    def recv(self, tensor: Tensor, src: int | None = None, tag: int = 0) -> Tensor:
        raise RuntimeError(f"Cannot receive from rank {src}: a single-device collective has no other rank")

    @override
    def barrier(self, device_ids: list[int] | None = None) -> None:
        return None

    @override
    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    @override
    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        _check_rank(src, "src")
        return obj
