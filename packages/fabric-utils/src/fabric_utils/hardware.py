"""Hardware probes. This is the one place where tests fake hardware the machine lacks (see ``override_hardware``).

None of these functions initialises CUDA (PyTorch counts devices through NVML when it can), so forking afterwards
stays safe.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from fabric_utils.imports import TORCH_XLA


@dataclass
class _Overrides:
    cuda_device_count: int | None = None
    mps_available: bool | None = None
    xla_available: bool | None = None
    xla_device_count: int | None = None


_OVERRIDES = _Overrides()


def cuda_device_count() -> int:
    """Number of CUDA devices this process may use (after ``CUDA_VISIBLE_DEVICES``), without initialising CUDA."""
    if _OVERRIDES.cuda_device_count is not None:
        return _OVERRIDES.cuda_device_count
    if not torch.backends.cuda.is_built():
        return 0
    return int(torch.cuda.device_count())


def cuda_available() -> bool:
    """Whether at least one CUDA device can be used (without initialising CUDA)."""
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
    if _OVERRIDES.xla_device_count is not None:
        return _OVERRIDES.xla_device_count > 0
    return TORCH_XLA.available


def xla_device_count() -> int:
    """Number of XLA devices the runtime reports (0 without torch_xla); imports torch_xla only when it exists."""
    if _OVERRIDES.xla_device_count is not None:
        return _OVERRIDES.xla_device_count
    if not xla_available():
        return 0
    # Count the devices attached to this host without starting the XLA runtime in this process (a started
    # runtime breaks a later xmp.spawn); fall back to the runtime's own count on torch_xla versions without it.
    try:
        from torch_xla._internal import tpu  # lazy: heavy and optional

        return int(tpu.num_available_devices())
    except (ImportError, AttributeError):
        import torch_xla.runtime as xr

        return int(xr.addressable_runtime_device_count())


def cpu_count() -> int:
    """Number of CPU cores this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def suggested_max_num_workers(local_world_size: int) -> int:
    """A ``num_workers`` for each process's DataLoader that leaves the CPU cores to share among
    ``local_world_size`` processes on this machine, keeping one core per process for its main loop (at least 1)."""
    if isinstance(local_world_size, bool) or not isinstance(local_world_size, int):
        raise TypeError(f"local_world_size must be an int >= 1, got {local_world_size!r}")
    if local_world_size < 1:
        raise ValueError(f"local_world_size must be >= 1 (the processes on this machine), got {local_world_size!r}")
    return max(1, cpu_count() // local_world_size - 1)


def _check_count(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"override_hardware({name}=...) needs a non-negative int or None, got {value!r}")


def _check_flag(name: str, value: bool | None) -> None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"override_hardware({name}=...) needs True, False or None, got {value!r}")


@contextmanager
def override_hardware(
    *,
    cuda_device_count: int | None = None,
    mps_available: bool | None = None,
    xla_available: bool | None = None,
    xla_device_count: int | None = None,
) -> Iterator[None]:
    """Make the probes above report the given values inside the block (for tests on machines that lack them).

    Arguments left as ``None`` keep what the probe reported before (the real value, or an enclosing override).
    ``xla_device_count=N`` alone also makes ``xla_available()`` report ``N > 0``; ``xla_available=True`` alone
    leaves ``xla_device_count()`` to ask torch_xla (a test may install a fake ``torch_xla`` for that).
    """
    _check_count("cuda_device_count", cuda_device_count)
    _check_flag("mps_available", mps_available)
    _check_flag("xla_available", xla_available)
    _check_count("xla_device_count", xla_device_count)
    previous = replace(_OVERRIDES)
    given = {
        "cuda_device_count": cuda_device_count,
        "mps_available": mps_available,
        "xla_available": xla_available,
        "xla_device_count": xla_device_count,
    }
    for key, value in given.items():
        if value is not None:
            setattr(_OVERRIDES, key, value)
    try:
        yield
    finally:
        for key, value in vars(previous).items():
            setattr(_OVERRIDES, key, value)
