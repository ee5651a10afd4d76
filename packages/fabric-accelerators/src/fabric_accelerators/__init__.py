"""fabric-accelerators: CPU, CUDA, MPS and XLA accelerators, ``devices`` parsing and the accelerator registry."""

from fabric_accelerators.base import Accelerator
from fabric_accelerators.cpu import CPUAccelerator
from fabric_accelerators.cuda import CUDAAccelerator, find_usable_cuda_devices
from fabric_accelerators.devices import DevicesFlag
from fabric_accelerators.mps import MPSAccelerator
from fabric_accelerators.registry import (
    ACCELERATOR_REGISTRY,
    AcceleratorUnavailableError,
    available_accelerators,
    resolve_accelerator_name,
    resolve_gpu_accelerator,
    select_auto_accelerator,
)
from fabric_accelerators.xla import XLAAccelerator

__version__ = "0.1.0"

__all__ = [
    "ACCELERATOR_REGISTRY",
    "Accelerator",
    "AcceleratorUnavailableError",
    "CPUAccelerator",
    "CUDAAccelerator",
    "DevicesFlag",
    "MPSAccelerator",
    "XLAAccelerator",
    "available_accelerators",
    "find_usable_cuda_devices",
    "resolve_accelerator_name",
    "resolve_gpu_accelerator",
    "select_auto_accelerator",
]
