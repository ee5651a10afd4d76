"""The CUDA accelerator, ``find_usable_cuda_devices`` and the hint about TF32 matmuls on Ampere and later GPUs.

Counting devices goes through ``fabric_utils.cuda_device_count`` (NVML), which does not initialise CUDA: a process
that only parsed ``devices`` can still fork workers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import torch
from typing_extensions import override

from fabric_accelerators.base import Accelerator
from fabric_accelerators.devices import check_device_type, describe_available, parse_device_indices
from fabric_utils import WarningCache, cuda_device_count


class CUDAAccelerator(Accelerator):
    """NVIDIA GPUs through CUDA; ``devices`` selects device indices."""

    name = "cuda"
    priority = 30

    @override
    def setup_device(self, device: torch.device) -> None:
        check_device_type(device, "cuda", type(self).__name__)
        torch.cuda.set_device(device)
        _hint_matmul_precision(device)

    @override
    def teardown(self) -> None:
        # Only a process that used CUDA has a cache to release; never initialise CUDA just to empty it.
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    @staticmethod
    @override
    def parse_devices(devices: Any) -> list[int]:
        """The CUDA device indices selected by ``devices``: ``"auto"``/``-1`` (all), ``2``, ``[0, 1]``, ``"0,1"``."""
        return parse_device_indices(devices, available=cuda_device_count(), kind="CUDA")

    @staticmethod
    @override
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        return [torch.device("cuda", index) for index in CUDAAccelerator.parse_devices(devices)]

    @staticmethod
    @override
    def auto_device_count() -> int:
        return cuda_device_count()

    @staticmethod
    @override
    def is_available() -> bool:
        return cuda_device_count() > 0

    @override
    def get_device_stats(self, device: torch.device) -> dict[str, Any]:
        """The CUDA caching allocator's statistics (``torch.cuda.memory_stats``) for ``device``."""
        check_device_type(device, "cuda", type(self).__name__)
        return dict(torch.cuda.memory_stats(device))


# --- the TF32 hint ----------------------------------------------------------------------------------------------------

_hints = WarningCache()


def matmul_precision_hint(device_name: str, capability: tuple[int, int], tf32_enabled: bool) -> str | None:
    """The hint to show for a GPU, or ``None``: only Ampere and later (compute capability 8.0+) have TF32 Tensor
    Cores, and the hint is pointless once the user chose a matmul precision."""
    if tuple(capability) < (8, 0) or tf32_enabled:
        return None
    return (
        f"The CUDA device {device_name!r} has Tensor Cores that run float32 matrix multiplications much faster in "
        "TF32. To use them, call `torch.set_float32_matmul_precision('high')` (or 'medium'), trading a little "
        "precision for speed. See https://pytorch.org/docs/stable/generated/torch.set_float32_matmul_precision.html"
    )


def tf32_matmul_enabled() -> bool:
    """Whether the user already changed float32 matmul precision from full IEEE precision (legacy or new torch API)."""
    new_api = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if new_api == "tf32":
        return True
    try:
        return torch.get_float32_matmul_precision() != "highest"
    except RuntimeError:
        # torch refuses to answer when the legacy and the new API were mixed: the user configured it on purpose.
        return True


def _hint_matmul_precision(device: torch.device) -> None:
    message = matmul_precision_hint(
        torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device), tf32_matmul_enabled()
    )
    if message is not None:
        _hints.info(message)


# --- find_usable_cuda_devices -----------------------------------------------------------------------------------------

# Runs in a fresh interpreter: argv[1] is how many usable devices to stop at (-1: all), argv[2] the indices to try.
_PROBE_SCRIPT = """
import json, sys
import torch
wanted = int(sys.argv[1])
usable, busy = [], []
for index in json.loads(sys.argv[2]):
    try:
        torch.ones(1, device=torch.device("cuda", index)).sum().item()
    except Exception as err:
        busy.append([index, (type(err).__name__ + ": " + str(err)).splitlines()[0]])
        continue
    usable.append(index)
    if len(usable) == wanted:
        break
print(json.dumps({"usable": usable, "busy": busy}))
"""


def find_usable_cuda_devices(num_devices: int = -1, *, timeout: float = 120.0) -> list[int]:
    """Indices of ``num_devices`` CUDA devices that accept work now (``-1``: every one that does).

    Useful where GPUs run in exclusive compute mode and some are held by other processes:
    ``Fabric(accelerator="cuda", devices=find_usable_cuda_devices(2))``. Each visible device is tried by allocating a
    tensor on it in a short-lived subprocess, so this process never initialises CUDA (forking later stays safe) and
    holds no context on any GPU afterwards.

    Raises ``ValueError`` for a bad ``num_devices`` or one beyond the visible devices, ``RuntimeError`` when fewer
    devices than requested accept work.
    """
    if isinstance(num_devices, bool) or not isinstance(num_devices, int):
        raise TypeError(f"`num_devices` must be an int (-1 for all), got {num_devices!r}.")
    if num_devices == 0 or num_devices < -1:
        raise ValueError(f"`num_devices={num_devices}` is not valid; ask for a positive number, or -1 for all.")
    visible = cuda_device_count()
    if visible == 0:
        raise ValueError(f"find_usable_cuda_devices({num_devices}): {describe_available('visible CUDA', 0)}.")
    if num_devices > visible:
        raise ValueError(
            f"find_usable_cuda_devices({num_devices}) asks for {num_devices} devices, but "
            f"{describe_available('visible CUDA', visible)}."
        )
    usable, busy = _probe_cuda_devices(list(range(visible)), num_devices, timeout)
    if len(usable) < (1 if num_devices == -1 else num_devices):
        reasons = "; ".join(f"device {index}: {reason}" for index, reason in busy)
        raise RuntimeError(
            f"find_usable_cuda_devices({num_devices}) found {len(usable)} usable CUDA device(s) {usable} out of "
            f"{visible} visible. The others cannot be used now (held by other processes?): {reasons}"
        )
    return usable


def _probe_cuda_devices(indices: list[int], wanted: int, timeout: float) -> tuple[list[int], list[tuple[int, str]]]:
    command = [sys.executable, "-c", _PROBE_SCRIPT, str(wanted), json.dumps(indices)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"Trying the CUDA devices {indices} did not finish within {timeout} s.") from None
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not lines:
        raise RuntimeError(
            f"Trying the CUDA devices {indices} failed (exit code {result.returncode}): {result.stderr.strip()[-2000:]}"
        )
    answer = json.loads(lines[-1])
    return [int(index) for index in answer["usable"]], [(int(index), str(why)) for index, why in answer["busy"]]
