"""``SingleDeviceCollective``: the collective of a group with one process. Every primitive is local."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
from torch import Tensor
from typing_extensions import Self, override

from fabric_strategies.collectives.base import Collective
from fabric_strategies.collectives.torch_collective import to_native_op


def _check_rank(rank: int | None, role: str) -> None:
    if rank is not None and rank != 0:
        raise ValueError(f"{role}={rank!r} does not exist: a single-device collective has only rank 0")


def _check_list(items: list[Any] | None, name: str, what: str = "tensor") -> list[Any]:
    if items is None or len(items) != 1:
        got = None if items is None else f"{len(items)} {what}s"
        raise ValueError(f"`{name}` must hold exactly one {what} (world size 1), got {got}")
    return items


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
    def monitored_barrier(self, timeout: timedelta | None = None, wait_all_ranks: bool = False) -> None:
        return None

    @override
    def broadcast_object_list(self, object_list: list[Any], src: int, device: torch.device | None = None) -> list[Any]:
        _check_rank(src, "src")
        return object_list

    @override
    def gather_object(self, obj: Any, object_gather_list: list[Any] | None = None, dst: int = 0) -> list[Any] | None:
        _check_rank(dst, "dst")
        _check_list(object_gather_list, "object_gather_list", "slot")[0] = obj
        return object_gather_list

    @override
    def scatter_object_list(
        self, scatter_object_output_list: list[Any], scatter_object_input_list: list[Any] | None, src: int = 0
    ) -> list[Any]:
        _check_rank(src, "src")
        if not scatter_object_output_list:
            raise ValueError("`scatter_object_output_list` must hold at least one slot for the received object")
        scatter_object_output_list[0] = _check_list(scatter_object_input_list, "scatter_object_input_list", "object")[0]
        return scatter_object_output_list

    @override
    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    @override
    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        _check_rank(src, "src")
        return obj
