"""The ``Accelerator`` base: one kind of device (CPU, CUDA, MPS, XLA)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from fabric_utils import Registry


class Accelerator(ABC):
    """One kind of hardware. Stateless apart from the device it sets up; orthogonal to strategies and precision.

    Class-level knowledge (used by the connector to answer ``accelerator="auto"`` and ``devices=...``):
    ``is_available()``, ``auto_device_count()``, ``parse_devices(devices)``, ``get_parallel_devices(devices)`` and
    ``priority`` (higher wins in "auto"). ``name`` is the registry name; ``aliases`` are further registry names
    for the same class (``register_accelerators`` registers all of them).
    """

    name: str = ""
    priority: int = 0
    aliases: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def setup_device(self, device: torch.device) -> None:
        """Prepare ``device`` for use by this process (e.g. ``torch.cuda.set_device``)."""

    def teardown(self) -> None:  # noqa: B027 - optional hook: most accelerators hold nothing to release
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

    @classmethod
    def register_accelerators(cls, registry: Registry[Accelerator]) -> None:
        """Register this class under ``name`` and each of ``aliases``.

        Its shape (a callable that receives the registry) is what a ``fabric.accelerators`` entry point loads to, so a
        third-party package can point its entry point at ``MyAccelerator.register_accelerators``.
        """
        if not cls.name:
            raise ValueError(f"{cls.__qualname__} has no `name`; set the class attribute before registering it.")
        registry.register(cls.name, cls)
        for alias in cls.aliases:
            registry.register(alias, cls, description=f"Alias of {cls.name!r} ({cls.__qualname__}).")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
