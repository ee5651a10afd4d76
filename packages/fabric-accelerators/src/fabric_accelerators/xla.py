"""The XLA accelerator (TPUs and other XLA devices). ``torch_xla`` is imported lazily, only where it is needed.

XLA runs either one process or one per device, so ``devices`` is ``1``, the device count (all), or a single index.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from typing_extensions import override

from fabric_accelerators.base import Accelerator
from fabric_accelerators.devices import check_device_type, describe_available, normalize_devices
from fabric_utils import TORCH_XLA, MissingDependencyError, xla_available, xla_device_count


class XLAAccelerator(Accelerator):
    """TPUs and other XLA devices through torch_xla; ``devices`` is 1, all of them, or one index such as [2]."""

    name = "xla"
    aliases = ("tpu",)
    priority = 40

    def __init__(self) -> None:
        if not xla_available():
            raise MissingDependencyError(
                f"XLAAccelerator requires `{TORCH_XLA.distribution}`, which is not installed. Run: {TORCH_XLA.install}"
            )

    @override
    def setup_device(self, device: torch.device) -> None:
        # The XLA launcher gives each process its device; there is nothing to select here beyond checking the type.
        check_device_type(device, "xla", type(self).__name__)

    @staticmethod
    @override
    def parse_devices(devices: Any) -> int | list[int]:
        """``1``, the number of XLA devices (``"auto"``/``-1`` mean that), or a one-index list such as ``[2]``."""
        return parse_xla_devices(devices, available=XLAAccelerator.auto_device_count())

    @staticmethod
    @override
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        parsed = XLAAccelerator.parse_devices(devices)
        if isinstance(parsed, list):
            return [torch.device("xla", index) for index in parsed]
        return [torch.device("xla", index) for index in range(parsed)]

    @staticmethod
    @override
    def auto_device_count() -> int:
        return xla_device_count() if xla_available() else 0

    @staticmethod
    @override
    def is_available() -> bool:
        try:
            return XLAAccelerator.auto_device_count() > 0
        except (ImportError, RuntimeError, ValueError, AssertionError, OSError):
            # torch_xla installed but no usable device or runtime (e.g. no TPU on this host)
            return False

    @override
    def get_device_stats(self, device: torch.device) -> dict[str, Any]:
        """The memory figures torch_xla reports for ``device`` (their keys depend on the torch_xla version)."""
        check_device_type(device, "xla", type(self).__name__)
        TORCH_XLA.require("XLAAccelerator.get_device_stats")
        xla_model = importlib.import_module("torch_xla.core.xla_model")
        return dict(xla_model.get_memory_info(device))


def parse_xla_devices(devices: object, *, available: int) -> int | list[int]:
    """Validate an XLA ``devices`` request against ``available`` devices; see ``XLAAccelerator.parse_devices``."""
    normalized = normalize_devices(devices)
    if available <= 0:
        raise ValueError(f"`devices={devices!r}` asks for XLA devices, but {describe_available('XLA', 0)}.")
    if normalized == "auto" or normalized == -1:
        return available
    if isinstance(normalized, int) and normalized in (1, available):
        return normalized
    if isinstance(normalized, list) and len(normalized) == 1 and 0 <= normalized[0] < available:
        return normalized
    raise ValueError(
        f'`devices={devices!r}` is not supported by XLA: use 1, {available} (all), "auto", -1, or a single index '
        f"[i] with 0 <= i < {available}; {describe_available('XLA', available)}."
    )
