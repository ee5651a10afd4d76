"""``SingleDeviceXLAStrategy``: one process on one XLA device."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from typing_extensions import override

from fabric_accelerators import Accelerator
from fabric_environments import ClusterEnvironment
from fabric_io import CheckpointIO, XLACheckpointIO
from fabric_precision import Precision, XLAPrecision
from fabric_strategies.checkpoint import StateFilter
from fabric_strategies.single_device import SingleDeviceStrategy
from fabric_strategies.xla import runtime
from fabric_strategies.xla.strategy import XLA_PRECISIONS, check_xla_precision
from fabric_utils import PathLike


def _as_xla_device(device: torch.device | str | int | None) -> torch.device | None:
    if device is None:
        return None
    if isinstance(device, bool) or not isinstance(device, (torch.device, str, int)):
        raise TypeError(f"device must be an XLA torch.device, a string such as 'xla:0' or an index, got {device!r}")
    resolved = torch.device("xla", device) if isinstance(device, int) else torch.device(device)
    if resolved.type != "xla":
        raise ValueError(f"SingleDeviceXLAStrategy runs on an 'xla' device, got {resolved}. Use e.g. 'xla:0' or 0.")
    return resolved


class SingleDeviceXLAStrategy(SingleDeviceStrategy):
    """One process on one XLA device (the first unless a device or index is given).

    The device is resolved through torch_xla when the environment is set up; the optimizer step goes through
    ``XLAPrecision`` (``xm.optimizer_step``), and checkpoints are written by ``XLACheckpointIO`` after the pending
    graph has run.
    """

    name: ClassVar[str] = "single_xla"
    supported_precisions: ClassVar[tuple[str, ...] | None] = XLA_PRECISIONS
    supported_device_types: ClassVar[tuple[str, ...] | None] = ("xla",)

    def __init__(
        self,
        device: torch.device | str | int | None = None,
        accelerator: Accelerator | None = None,
        checkpoint_io: CheckpointIO | None = None,
        precision: Precision | None = None,
    ) -> None:
        runtime.require_xla(type(self).__name__)
        check_xla_precision(type(self).__name__, precision)
        requested = _as_xla_device(device)
        super().__init__(device=requested, accelerator=accelerator, checkpoint_io=checkpoint_io, precision=precision)
        self._resolved_device: torch.device | None = None
        self._fallback_checkpoint_io = XLACheckpointIO()
        self._fallback_precision = XLAPrecision("32-true")

    @property
    @override
    def root_device(self) -> torch.device:
        """The device torch_xla gave this process once set up; before, the requested device (an identifier)."""
        if self._resolved_device is not None:
            return self._resolved_device
        return self._device if self._device is not None else torch.device("xla", 0)

    @override
    def complete(
        self,
        *,
        accelerator: Accelerator | None = None,
        precision: Precision | None = None,
        checkpoint_io: CheckpointIO | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        parallel_devices: list[torch.device] | None = None,
        num_nodes: int | None = None,
    ) -> None:
        if self._precision is None:
            check_xla_precision(type(self).__name__, precision)
        super().complete(
            accelerator=accelerator,
            precision=precision,
            checkpoint_io=checkpoint_io,
            parallel_devices=parallel_devices,
            num_nodes=num_nodes,
        )

    @override
    def default_precision(self, name: str) -> XLAPrecision:
        self._check_precision_supported(name)
        return XLAPrecision(name)  # type: ignore[arg-type]

    @override
    def setup_environment(self) -> None:
        self._resolved_device = runtime.xla_device(self.root_device.index)
        super().setup_environment()

    @override
    def save_checkpoint(
        self,
        path: PathLike,
        state: Mapping[str, Any],
        storage_options: Any | None = None,
        filter: StateFilter | None = None,
    ) -> None:
        if self._resolved_device is not None:
            runtime.sync()
        super().save_checkpoint(path, state, storage_options=storage_options, filter=filter)

    @override
    def teardown(self) -> None:
        super().teardown()
        self._resolved_device = None
