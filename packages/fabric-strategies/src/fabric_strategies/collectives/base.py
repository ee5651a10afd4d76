"""The ``Collective`` base: the communication primitives of a group of processes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor
from typing_extensions import Self


class Collective(ABC):
    """Communication between the processes of one group.

    The methods follow ``torch.distributed``'s signatures but return their result, so the same code works whether the
    implementation communicates (``TorchCollective``) or not (``SingleDeviceCollective``). Tensors passed as outputs
    are written in place, as in ``torch.distributed``.
    """

    def __init__(self) -> None:
        self._group: Any | None = None

    @property
    def group(self) -> Any | None:
        """The process group this collective communicates in (``None``: the default group)."""
        return self._group

    @property
    @abstractmethod
    def rank(self) -> int:
        """This process's rank within the group."""

    @property
    @abstractmethod
    def world_size(self) -> int:
        """Number of processes in the group."""

    # -- group life cycle ------------------------------------------------------------------------------------------
    @staticmethod
    @abstractmethod
    def is_available() -> bool:
        """Whether this kind of collective can be used in this installation."""

    @staticmethod
    @abstractmethod
    def is_initialized() -> bool:
        """Whether the default group of this kind exists in this process."""

    @abstractmethod
    def setup(self, **kwargs: Any) -> Self:
        """Create the default group if it does not exist yet."""

    @abstractmethod
    def create_group(self, **kwargs: Any) -> Self:
        """Create a new group (e.g. a subset of ranks) and communicate in it from now on."""

    @abstractmethod
    def teardown(self) -> Self:
        """Destroy what ``setup``/``create_group`` created."""

    # -- primitives ------------------------------------------------------------------------------------------------
    @abstractmethod
    def broadcast(self, tensor: Tensor, src: int) -> Tensor: ...

    @abstractmethod
    def all_reduce(self, tensor: Tensor, op: Any = "sum") -> Tensor: ...

    @abstractmethod
    def reduce(self, tensor: Tensor, dst: int, op: Any = "sum") -> Tensor: ...

    @abstractmethod
    def all_gather(self, tensor_list: list[Tensor], tensor: Tensor) -> list[Tensor]: ...

    @abstractmethod
    def gather(self, tensor: Tensor, gather_list: list[Tensor] | None = None, dst: int = 0) -> list[Tensor] | None: ...

    @abstractmethod
    def scatter(self, tensor: Tensor, scatter_list: list[Tensor] | None = None, src: int = 0) -> Tensor: ...

    @abstractmethod
    def reduce_scatter(self, output: Tensor, input_list: list[Tensor], op: Any = "sum") -> Tensor: ...

    @abstractmethod
    def all_to_all(self, output_tensor_list: list[Tensor], input_tensor_list: list[Tensor]) -> list[Tensor]: ...

    @abstractmethod
    def send(self, tensor: Tensor, dst: int, tag: int = 0) -> None: ...

    @abstractmethod
    def recv(self, tensor: Tensor, src: int | None = None, tag: int = 0) -> Tensor: ...

    @abstractmethod
    def barrier(self, device_ids: list[int] | None = None) -> None: ...

    @abstractmethod
    def monitored_barrier(self, timeout: timedelta | None = None, wait_all_ranks: bool = False) -> None:
        """A barrier that names the ranks that did not arrive within ``timeout`` (gloo only in torch)."""

    @abstractmethod
    def broadcast_object_list(self, object_list: list[Any], src: int, device: torch.device | None = None) -> list[Any]:
        """Fill ``object_list`` on every rank with rank ``src``'s list (same length everywhere) and return it."""

    @abstractmethod
    def gather_object(self, obj: Any, object_gather_list: list[Any] | None = None, dst: int = 0) -> list[Any] | None:
        """Every rank's ``obj`` into ``object_gather_list`` (one slot per rank) on rank ``dst``; ``None`` elsewhere."""

    @abstractmethod
    def scatter_object_list(
        self, scatter_object_output_list: list[Any], scatter_object_input_list: list[Any] | None, src: int = 0
    ) -> list[Any]:
        """Rank ``src``'s ``scatter_object_input_list[r]`` into ``scatter_object_output_list[0]`` on each rank ``r``."""

    @abstractmethod
    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (any picklable object), in rank order."""

    @abstractmethod
    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` as given on rank ``src``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, world_size={self.world_size})"
