"""The ``Accelerator`` base: one kind of device (CPU, CUDA, MPS, XLA)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch


class Accelerator(ABC):
    """One kind of hardware. Stateless apart from the device it sets up; orthogonal to strategies and precision.

    Class-level knowledge (used by the connector to answer ``accelerator="auto"`` and ``devices=...``):
    ``is_available()``, ``auto_device_count()``, ``parse_devices(devices)``, ``get_parallel_devices(devices)`` and
    ``priority`` (higher wins in "auto"). ``name`` is the registry name.
    """

    name: str = ""
    priority: int = 0

    @abstractmethod
    def setup_device(self, device: torch.device) -> None:
        """Prepare ``device`` for use by this process (e.g. ``torch.cuda.set_device``)."""

    def teardown(self) -> None:
        """Release what ``setup_device`` acquired."""

    @staticmethod
    @abstractmethod
    def parse_devices(devices: Any) -> Any:
        """Validate a user's ``devices`` request; return the normalised form (an int count or a list of indices).

        Raises ``ValueError``/``TypeError`` naming the bad value and what exists.
        """

    @staticmethod
    @abstractmethod
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        """The ``torch.device`` of each process, from the normalised form ``parse_devices`` returned."""

    @staticmethod
    @abstractmethod
    def auto_device_count() -> int:
        """How many devices ``devices="auto"`` means."""

    @staticmethod
    @abstractmethod
    def is_available() -> bool:
        """Whether this accelerator can be used on this machine."""

    def get_device_stats(self, device: torch.device) -> dict[str, Any]:
        """Device statistics (memory etc.) for logging; empty where the backend has none."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
