"""``SingleDeviceStrategy``: one process on one device."""

from __future__ import annotations

from typing import ClassVar

import torch
from typing_extensions import override

from fabric_accelerators import Accelerator
from fabric_io import CheckpointIO
from fabric_precision import Precision
from fabric_strategies.base import Parts, Strategy
from fabric_strategies.collectives.single_device_collective import SingleDeviceCollective


def as_device(device: torch.device | str | int) -> torch.device:
    """``torch.device`` from a device, a string (``"cuda:1"``) or a CUDA index."""
    if isinstance(device, bool) or not isinstance(device, (torch.device, str, int)):
        raise TypeError(f"device must be a torch.device, a string such as 'cuda:0' or a CUDA index, got {device!r}")
    if isinstance(device, int):
        return torch.device("cuda", device)
    return torch.device(device)


class SingleDeviceStrategy(Strategy):
    """One process on one device (the CPU unless a device is given or completed)."""

    name: ClassVar[str] = "single_device"

    def __init__(
        self,
        device: torch.device | str | int | None = None,
        accelerator: Accelerator | None = None,
        checkpoint_io: CheckpointIO | None = None,
        precision: Precision | None = None,
    ) -> None:
        super().__init__(accelerator=accelerator, checkpoint_io=checkpoint_io, precision=precision)
        self._device = None if device is None else as_device(device)
        self._collective = SingleDeviceCollective()

    @property
    @override
    def root_device(self) -> torch.device:
        return self._device if self._device is not None else torch.device("cpu")

    @property
    def collective(self) -> SingleDeviceCollective:
        return self._collective

    @override
    def _complete(self, parts: Parts) -> None:
        super()._complete(parts)
        if self._device is None and parts.parallel_devices:
            if len(parts.parallel_devices) != 1:
                raise ValueError(
                    f"SingleDeviceStrategy runs on exactly one device, got {len(parts.parallel_devices)}:"
                    f" {parts.parallel_devices}. Use strategy='ddp' for several."
                )
            self._device = as_device(parts.parallel_devices[0])

    @override
    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.root_device}, precision={self.precision!r})"
