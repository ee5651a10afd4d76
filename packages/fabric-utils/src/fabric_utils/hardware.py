"""Hardware probes. This is the one place where tests fake hardware the machine lacks (see ``override_hardware``).

None of these functions initialises CUDA, so forking afterwards stays safe.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from fabric_utils.imports import TORCH_XLA


@dataclass
class _Overrides:
    cuda_device_count: int | None = None
    mps_available: bool | None = None
    xla_available: bool | None = None
    xla_device_count: int | None = None


_OVERRIDES = _Overrides()


def _nvml_device_count() -> int:
    """Ask NVML (through torch) how many devices CUDA_VISIBLE_DEVICES leaves; -1 if NVML cannot answer."""
    counter = getattr(torch.cuda, "_device_count_nvml", None)
    if counter is None:
        return -1
    try:
        return int(counter())
    except Exception:
        return -1


def cuda_device_count() -> int:
    """Number of usable CUDA devices, counted without initialising CUDA when NVML is available."""
    if _OVERRIDES.cuda_device_count is not None:
        return _OVERRIDES.cuda_device_count
    if not torch.backends.cuda.is_built():
        return 0
    count = _nvml_device_count()
    if count >= 0:
        return count
    return torch.cuda.device_count()


def cuda_available() -> bool:
    return cuda_device_count() > 0


def mps_available() -> bool:
    """Whether Apple's MPS backend can be used (Apple silicon only)."""
    if _OVERRIDES.mps_available is not None:
        return _OVERRIDES.mps_available
    return bool(torch.backends.mps.is_available()) and platform.processor() in ("arm", "arm64")


def xla_available() -> bool:
    """Whether torch_xla is installed (the device itself is probed by the XLA accelerator when used)."""
    if _OVERRIDES.xla_available is not None:
        return _OVERRIDES.xla_available
    return TORCH_XLA.available


def xla_device_count() -> int:
    if _OVERRIDES.xla_device_count is not None:
        return _OVERRIDES.xla_device_count
    if not xla_available():
        return 0
    import torch_xla.runtime as xr  # lazy: heavy and optional

    return int(xr.global_runtime_device_count())


def cpu_count() -> int:
    return os.cpu_count() or 1


@contextmanager
def override_hardware(
    *,
    cuda_device_count: int | None = None,
    mps_available: bool | None = None,
    xla_available: bool | None = None,
    xla_device_count: int | None = None,
) -> Iterator[None]:
    """Make the probes above report the given values inside the block (for tests on machines that lack them)."""
    previous = _Overrides(**vars(_OVERRIDES))
    _OVERRIDES.cuda_device_count = cuda_device_count
    _OVERRIDES.mps_available = mps_available
    _OVERRIDES.xla_available = xla_available
    _OVERRIDES.xla_device_count = xla_device_count
    try:
        yield
    finally:
        for key, value in vars(previous).items():
            setattr(_OVERRIDES, key, value)
