"""``XLAStrategy``: data parallelism over XLA devices (TPUs), one process per device; collectives through ``xm``."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.nn import Module
from torch.utils.data import DataLoader
from typing_extensions import override

from fabric_environments import XLAEnvironment
from fabric_strategies.collectives.functional import local_reduce
from fabric_strategies.inherited_parameters import takes_parameters_of
from fabric_strategies.launchers.base import Launcher
from fabric_strategies.parallel import PARTS_BUT_ENVIRONMENT, ParallelStrategy
from fabric_strategies.xla import runtime
from fabric_strategies.xla.launcher import XLALauncher
from fabric_strategies.xla.parts import XLAParts
from fabric_utils import check_reduce_op


class XLAStrategy(XLAParts, ParallelStrategy):
    """Data-parallel training on XLA devices (TPUs), one process per device.

    The processes are started by :class:`XLALauncher` (``xmp.spawn``).
    Gradients are averaged across processes in the optimizer step (``xm.optimizer_step``, through
    ``XLAPrecision``); collectives use ``torch_xla.core.xla_model``. Ranks come from torch_xla's runtime
    (``XLAEnvironment``); before the processes are launched this process counts as rank 0 of 1, so nothing touches
    the XLA runtime before ``xmp.spawn``.

    Args:
        sync_module_states: broadcast the parameters and buffers of rank 0 to every process in ``setup_module``.
    """

    name: ClassVar[str] = "xla"

    @takes_parameters_of(ParallelStrategy, names=PARTS_BUT_ENVIRONMENT)
    def __init__(self, inherited: dict[str, Any], /, *, sync_module_states: bool = True) -> None:
        runtime.require_xla(type(self).__name__)
        super().__init__(**inherited, cluster_environment=XLAEnvironment())
        self._sync_module_states = bool(sync_module_states)
        self._launched = False
        self._device: torch.device | None = None  # this process's XLA device, once launched
        self._use_xla_defaults()

    @property
    def sync_module_states(self) -> bool:
        return self._sync_module_states

    @property
    def launched(self) -> bool:
        """Whether this process is one of the launched ones (its environment is set up)."""
        return self._launched

    @property
    @override
    def _xla_started(self) -> bool:
        return self._launched

    @override
    def _set_world_ranks(self) -> None:
        """Nothing to set: torch_xla's runtime fixes ranks and world size."""

    # -- where this process runs ---------------------------------------------------------------------------------
    @property
    @override
    def parallel_devices(self) -> list[torch.device]:
        return list(self._parallel_devices) if self._parallel_devices is not None else [torch.device("xla", 0)]

    @property
    @override
    def root_device(self) -> torch.device:
        """This process's XLA device once launched; before, the first device (an identifier, not touched)."""
        if self._device is not None:
            return self._device
        return self.parallel_devices[0]

    @property
    @override
    def world_size(self) -> int:
        return super().world_size if self._launched else 1

    @property
    @override
    def global_rank(self) -> int:
        return super().global_rank if self._launched else 0

    @property
    @override
    def local_rank(self) -> int:
        return super().local_rank if self._launched else 0

    @property
    @override
    def node_rank(self) -> int:
        return super().node_rank if self._launched else 0

    @override
    def _configure_launcher(self) -> Launcher | None:
        return XLALauncher(self)

    @override
    def setup_environment(self) -> None:
        self._launched = True
        self._device = runtime.xla_device()
        super().setup_environment()

    # -- modules and data ----------------------------------------------------------------------------------------
    @override
    def setup_module(self, module: Module) -> Module:
        """Give every process rank 0's parameters and buffers (``sync_module_states``); no wrapper is needed."""
        if self._sync_module_states and self.world_size > 1:
            runtime.xla_model().broadcast_master_param(module)
        return module

    @override
    def process_dataloader(self, dataloader: DataLoader) -> Any:
        """Wrap the loader in torch_xla's ``MpDeviceLoader``, which moves batches to the device in the background."""
        parallel_loader = runtime.xla_module("distributed.parallel_loader")
        if isinstance(dataloader, parallel_loader.MpDeviceLoader):
            return dataloader
        loader = parallel_loader.MpDeviceLoader(dataloader, self.root_device)
        # keep the attributes code reads from a DataLoader
        loader.dataset = dataloader.dataset
        loader.batch_sampler = getattr(dataloader, "batch_sampler", None)
        return loader

    @override
    def no_backward_sync(self, module: Module, enabled: bool) -> AbstractContextManager[Any]:
        """Backward passes never synchronise here (gradients are reduced in the optimizer step): nothing to skip."""
        return nullcontext()

    # -- collectives ---------------------------------------------------------------------------------------------
    @override
    def all_reduce(self, tensor: Tensor | float, group: Any | None = None, reduce_op: Any = "mean") -> Tensor:
        check_reduce_op(reduce_op)
        if not isinstance(tensor, Tensor):
            tensor = torch.tensor(tensor, device=self.root_device)
        if self.world_size == 1:
            return local_reduce(tensor, reduce_op)
        return runtime.all_reduce(tensor.to(self.root_device), reduce_op, self.world_size, group)

    @override
    def all_gather(self, tensor: Tensor, group: Any | None = None, sync_grads: bool = False) -> Tensor | list[Tensor]:
        if self.world_size == 1:
            return tensor
        original = tensor.device
        gathered = runtime.all_gather(tensor.to(self.root_device), self.world_size, sync_grads=sync_grads, groups=group)
        if isinstance(gathered, list):
            return [t.to(original) for t in gathered]
        return gathered.to(original)

    @override
    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if not 0 <= src < self.world_size:
            raise ValueError(f"src={src!r} is not a rank of this run: choose one between 0 and {self.world_size - 1}")
        if self.world_size == 1:
            return obj
        return runtime.broadcast_object(obj, src, self.global_rank, self.root_device)

    @override
    def barrier(self, name: str | None = None) -> None:
        if self._launched and self.world_size > 1:
            runtime.barrier(name)

    # -- end -------------------------------------------------------------------------------------------------------
    @override
    def teardown(self) -> None:
        super().teardown()
        self._launched = False
        self._device = None

    @override
    def __repr__(self) -> str:
        return f"{type(self).__name__}(precision={self.precision!r}, launched={self._launched})"
