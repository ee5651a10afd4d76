"""The MPS accelerator: the single GPU of an Apple silicon machine."""

from __future__ import annotations

from typing import Any

import torch
from typing_extensions import override

from fabric_accelerators.base import Accelerator
from fabric_accelerators.devices import check_device_type, parse_device_indices
from fabric_utils import mps_available


class MPSAccelerator(Accelerator):
    """Apple silicon GPU through Metal (MPS); there is exactly one device."""

    name = "mps"
    priority = 20

    @override
    def setup_device(self, device: torch.device) -> None:
        check_device_type(device, "mps", type(self).__name__)

    @staticmethod
    @override
    def parse_devices(devices: Any) -> list[int]:
        """``[0]`` for any request of the single device: ``1``, ``-1``, ``"auto"``, ``[0]``, ``"0,"``."""
        return parse_device_indices(devices, available=MPSAccelerator.auto_device_count(), kind="MPS")

    @staticmethod
    @override
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        return [torch.device("mps", index) for index in MPSAccelerator.parse_devices(devices)]

    @staticmethod
    @override
    def auto_device_count() -> int:
        return 1 if mps_available() else 0

    @staticmethod
    @override
    def is_available() -> bool:
        return mps_available()

    @override
    def get_device_stats(self, device: torch.device) -> dict[str, Any]:
        """Memory held by tensors and by the Metal driver, in bytes."""
        check_device_type(device, "mps", type(self).__name__)
        return {
            "current_allocated_bytes": torch.mps.current_allocated_memory(),
            "driver_allocated_bytes": torch.mps.driver_allocated_memory(),
        }
