"""The package's public surface, frozen, and an import without side effects."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import fabric_accelerators

PUBLIC_NAMES = [
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


def test_public_surface_is_frozen():
    assert sorted(fabric_accelerators.__all__) == sorted(PUBLIC_NAMES)
    assert len(set(fabric_accelerators.__all__)) == len(fabric_accelerators.__all__)
    for name in PUBLIC_NAMES:
        assert getattr(fabric_accelerators, name) is not None


def test_version():
    assert fabric_accelerators.__version__ == "0.1.0"


_IMPORT_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    before = dict(os.environ)
    heavy = ("torch_xla", "deepspeed", "tensorboardX", "transformer_engine")
    import fabric_accelerators
    import torch
    print(json.dumps({
        "env_changed": dict(os.environ) != before,
        "heavy": sorted(m for m in heavy if m in sys.modules),
        "cuda_initialized": torch.cuda.is_initialized(),
        "names": list(fabric_accelerators.ACCELERATOR_REGISTRY),
    }))
    """
)


def test_import_has_no_side_effects():
    result = subprocess.run([sys.executable, "-c", _IMPORT_SCRIPT], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "env_changed": False,
        "heavy": [],
        "cuda_initialized": False,
        "names": ["cpu", "cuda", "mps", "tpu", "xla"],
    }
