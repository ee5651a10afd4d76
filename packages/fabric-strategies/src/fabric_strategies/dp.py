"""``DataParallelStrategy``: one process that splits each batch over several CUDA GPUs (``torch.nn.DataParallel``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.nn import DataParallel, Module
from typing_extensions import override

from fabric_strategies.base import Parts, Strategy
from fabric_strategies.inherited_parameters import takes_parameters_of
from fabric_strategies.launchers.base import Launcher
from fabric_strategies.parallel import PARTS_BUT_ENVIRONMENT, ParallelStrategy


def check_cuda_devices(devices: Sequence[torch.device]) -> None:
    """Raise ``ValueError`` unless every device is a CUDA device (DataParallel needs CUDA)."""
    wrong = [str(d) for d in devices if d.type != "cuda"]
    if wrong:
        raise ValueError(
            f"DataParallelStrategy ('dp') runs on CUDA devices only, got {wrong}. Use strategy='ddp' on other devices."
        )


class DataParallelStrategy(ParallelStrategy):
    """One process; each batch is split over several CUDA GPUs with torch.nn.DataParallel (CUDA only)."""

    name: ClassVar[str] = "dp"
    supported_device_types: ClassVar[tuple[str, ...] | None] = ("cuda",)
    fallback_strategy: ClassVar[str | None] = "ddp"

    @takes_parameters_of(ParallelStrategy, names=PARTS_BUT_ENVIRONMENT)
    def __init__(self, inherited: dict[str, Any], /) -> None:
        super().__init__(**inherited)
        if inherited["parallel_devices"] is not None:
            check_cuda_devices(self.parallel_devices)

    @override
    def _complete(self, parts: Parts) -> None:
        if parts.parallel_devices is not None and self._parallel_devices is None:
            check_cuda_devices([torch.device(d) for d in parts.parallel_devices])
        super()._complete(parts)

    @override
    def _set_world_ranks(self) -> None:
        """One process: nothing to tell the cluster environment."""

    # a single process drives every device: rank 0 of 1
    @property
    @override
    def root_device(self) -> torch.device:
        return self.parallel_devices[0]

    @property
    @override
    def world_size(self) -> int:
        return 1

    @property
    @override
    def global_rank(self) -> int:
        return 0

    @property
    @override
    def local_rank(self) -> int:
        return 0

    @property
    @override
    def node_rank(self) -> int:
        return 0

    @property
    @override
    def distributed_sampler_kwargs(self) -> dict[str, Any] | None:
        return None

    @override
    def _configure_launcher(self) -> Launcher | None:
        return None

    @override
    def setup_environment(self) -> None:
        check_cuda_devices(self.parallel_devices)
        Strategy.setup_environment(self)

    @override
    def setup_module(self, module: Module) -> DataParallel:
        device_ids = [d.index if d.index is not None else 0 for d in self.parallel_devices]
        return DataParallel(module, device_ids=device_ids)

    # one process: the collectives are local
    @override
    def all_reduce(self, tensor: Tensor | float, group: Any | None = None, reduce_op: Any = "mean") -> Tensor:
        return Strategy.all_reduce(self, tensor, group, reduce_op)

    @override
    def all_gather(self, tensor: Tensor, group: Any | None = None, sync_grads: bool = False) -> Tensor | list[Tensor]:
        return Strategy.all_gather(self, tensor, group, sync_grads)

    @override
    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return Strategy.broadcast(self, obj, src)

    @override
    def barrier(self, name: str | None = None) -> None:
        Strategy.barrier(self, name)

    @override
    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return Strategy.reduce_boolean_decision(self, decision, all)
