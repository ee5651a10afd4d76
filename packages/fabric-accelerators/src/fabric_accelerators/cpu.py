"""The CPU accelerator: ``devices`` is the number of processes to run on this machine's CPU."""

from __future__ import annotations

from typing import Any

import torch
from typing_extensions import override

from fabric_accelerators.base import Accelerator
from fabric_accelerators.devices import check_device_type, parse_process_count


class CPUAccelerator(Accelerator):
    """Run on the CPU; ``devices`` is the number of processes."""

    name = "cpu"
    priority = 10

    @override
    def setup_device(self, device: torch.device) -> None:
        check_device_type(device, "cpu", type(self).__name__)

    @staticmethod
    @override
    def parse_devices(devices: Any) -> int:
        """The number of processes: a positive int, its string form, or ``"auto"`` (one process)."""
        return parse_process_count(devices, kind="CPU")

    @staticmethod
    @override
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        return [torch.device("cpu")] * CPUAccelerator.parse_devices(devices)

    @staticmethod
    @override
    def auto_device_count() -> int:
        return 1

    @staticmethod
    @override
    def is_available() -> bool:
        return True
