"""``TorchCollective``: the communication primitives of ``torch.distributed``, returning their results."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from typing_extensions import Self, override

from fabric_strategies.collectives.base import Collective
from fabric_strategies.teardown import destroy_process_group_cleanly

NATIVE_OP_NAMES: tuple[str, ...] = ("sum", "mean", "avg", "product", "min", "max", "band", "bor", "bxor")


def to_native_op(op: Any) -> Any:
    """Turn a reduction name (case-insensitive) or a ``torch.distributed.ReduceOp`` into a ``ReduceOp``."""
    if isinstance(op, (dist.ReduceOp, dist.ReduceOp.RedOpType)):
        return op
    if isinstance(op, str):
        name = op.lower()
        if name in ("mean", "avg"):
            return dist.ReduceOp.AVG
        if name in NATIVE_OP_NAMES:
            return getattr(dist.ReduceOp, name.upper())
    raise ValueError(f"Unknown reduce op {op!r}. Choose one of: {', '.join(NATIVE_OP_NAMES)} or a ReduceOp")


def tcp_init_method(address: str, port: int) -> str:
    """The ``init_method`` URL for a TCP rendezvous at ``address:port`` (IPv6 addresses get brackets)."""
    host = f"[{address}]" if ":" in address and not address.startswith("[") else address
    return f"tcp://{host}:{port}"


class TorchCollective(Collective):
    """Collectives over a ``torch.distributed`` process group (the default group unless ``create_group`` is used).

    ``setup(main_address=..., main_port=..., rank=..., world_size=..., backend=..., timeout=...)`` creates the default
    group when none exists; ``teardown()`` destroys what this object created, cleanly.
    """

    def __init__(self) -> None:
        super().__init__()
        self._owns_default_group = False

    @property
    @override
    def rank(self) -> int:
        return dist.get_rank(self._group)

    @property
    @override
    def world_size(self) -> int:
        return dist.get_world_size(self._group)

    # -- group life cycle ------------------------------------------------------------------------------------------
    @staticmethod
    @override
    def is_available() -> bool:
        return dist.is_available()

    @staticmethod
    @override
    def is_initialized() -> bool:
        return dist.is_available() and dist.is_initialized()

    @staticmethod
    def init_group(**kwargs: Any) -> None:
        """``torch.distributed.init_process_group(**kwargs)``."""
        dist.init_process_group(**kwargs)

    @staticmethod
    def new_group(**kwargs: Any) -> Any:
        """``torch.distributed.new_group(**kwargs)``: every rank of the default group must call it."""
        return dist.new_group(**kwargs)

    @staticmethod
    def destroy_group(group: Any | None = None) -> None:
        """Destroy ``group``; ``None`` or the default group destroys everything, cleanly."""
        if group is None or group is dist.GroupMember.WORLD:
            destroy_process_group_cleanly()
        else:
            dist.destroy_process_group(group)

    @override
    def setup(
        self,
        *,
        main_address: str | None = None,
        main_port: int | None = None,
        timeout: timedelta | None = None,
        **kwargs: Any,
    ) -> Self:
        if self.is_initialized():
            return self
        if main_address is not None and main_port is not None:
            kwargs.setdefault("init_method", tcp_init_method(main_address, main_port))
        if timeout is not None:
            kwargs["timeout"] = timeout
        kwargs.setdefault("backend", "gloo")
        self.init_group(**kwargs)
        self._owns_default_group = True
        return self

    @override
    def create_group(self, **kwargs: Any) -> Self:
        if not self.is_initialized():
            raise RuntimeError("Create the default process group first (`setup(...)`) before creating a subgroup.")
        self._group = self.new_group(**kwargs)
        return self

    @override
    def teardown(self) -> Self:
        if self._group is not None and self.is_initialized():
            self.destroy_group(self._group)
        self._group = None
        if self._owns_default_group and self.is_initialized():
            destroy_process_group_cleanly()
        self._owns_default_group = False
        return self

    # -- primitives ------------------------------------------------------------------------------------------------
    @override
    def broadcast(self, tensor: Tensor, src: int) -> Tensor:
        dist.broadcast(tensor, src, group=self._group)
        return tensor

    @override
    def all_reduce(self, tensor: Tensor, op: Any = "sum") -> Tensor:
        dist.all_reduce(tensor, op=to_native_op(op), group=self._group)
        return tensor

    @override
    def reduce(self, tensor: Tensor, dst: int, op: Any = "sum") -> Tensor:
        dist.reduce(tensor, dst, op=to_native_op(op), group=self._group)
        return tensor

    @override
    def all_gather(self, tensor_list: list[Tensor], tensor: Tensor) -> list[Tensor]:
        dist.all_gather(tensor_list, tensor, group=self._group)
        return tensor_list

    @override
    def gather(self, tensor: Tensor, gather_list: list[Tensor] | None = None, dst: int = 0) -> list[Tensor] | None:
        dist.gather(tensor, gather_list, dst, group=self._group)
        return gather_list

    @override
    def scatter(self, tensor: Tensor, scatter_list: list[Tensor] | None = None, src: int = 0) -> Tensor:
        dist.scatter(tensor, scatter_list, src, group=self._group)
        return tensor

    @override
    def reduce_scatter(self, output: Tensor, input_list: list[Tensor], op: Any = "sum") -> Tensor:
        dist.reduce_scatter(output, input_list, op=to_native_op(op), group=self._group)
        return output

    @override
    def all_to_all(self, output_tensor_list: list[Tensor], input_tensor_list: list[Tensor]) -> list[Tensor]:
        dist.all_to_all(output_tensor_list, input_tensor_list, group=self._group)
        return output_tensor_list

    @override
    def send(self, tensor: Tensor, dst: int, tag: int = 0) -> None:
        dist.send(tensor, dst, group=self._group, tag=tag)

    @override
    def recv(self, tensor: Tensor, src: int | None = None, tag: int = 0) -> Tensor:
        dist.recv(tensor, src, group=self._group, tag=tag)
        return tensor

    @override
    def barrier(self, device_ids: list[int] | None = None) -> None:
        if device_ids is None:
            dist.barrier(group=self._group)
        else:
            dist.barrier(group=self._group, device_ids=device_ids)

    @override
    def monitored_barrier(self, timeout: timedelta | None = None, wait_all_ranks: bool = False) -> None:
        dist.monitored_barrier(group=self._group, timeout=timeout, wait_all_ranks=wait_all_ranks)

    @override
    def broadcast_object_list(self, object_list: list[Any], src: int, device: torch.device | None = None) -> list[Any]:
        dist.broadcast_object_list(object_list, src, group=self._group, device=device)
        return object_list

    @override
    def gather_object(self, obj: Any, object_gather_list: list[Any] | None = None, dst: int = 0) -> list[Any] | None:
        dist.gather_object(obj, object_gather_list, dst, group=self._group)
        return object_gather_list

    @override
    def scatter_object_list(
        self, scatter_object_output_list: list[Any], scatter_object_input_list: list[Any] | None, src: int = 0
    ) -> list[Any]:
        dist.scatter_object_list(scatter_object_output_list, scatter_object_input_list, src, group=self._group)
        return scatter_object_output_list

    @override
    def all_gather_object(self, obj: Any) -> list[Any]:
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj, group=self._group)
        return gathered

    @override
    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src, group=self._group)
        return box[0]

    @override
    def __repr__(self) -> str:
        if not self.is_initialized():
            return f"{type(self).__name__}(uninitialized)"
        return super().__repr__()
