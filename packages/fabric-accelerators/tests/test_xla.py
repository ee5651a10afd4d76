"""XLAAccelerator: 1 device, all devices, or one index.

Device counts are faked through ``override_hardware``; the lazy ``torch_xla`` import is exercised with a fake
``torch_xla`` module installed only where no real one exists. The real path is marked ``RunIf(xla=True)``.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types

import pytest
import torch

from fabric_accelerators import XLAAccelerator
from fabric_testing import RunIf
from fabric_utils import MissingDependencyError, module_available, override_hardware, xla_device_count

EIGHT = {"xla_available": True, "xla_device_count": 8}


@pytest.mark.parametrize(
    ("devices", "expected"),
    [(1, 1), ("1", 1), (8, 8), ("8", 8), ("auto", 8), (-1, 8), ("-1", 8), ([3], [3]), ((0,), [0]), ("7,", [7])],
)
def test_parse_devices(devices, expected):
    with override_hardware(**EIGHT):
        assert XLAAccelerator.parse_devices(devices) == expected


@pytest.mark.parametrize(
    ("devices", "expected"),
    [
        (1, [torch.device("xla", 0)]),
        ("auto", [torch.device("xla", i) for i in range(8)]),
        ([5], [torch.device("xla", 5)]),
    ],
)
def test_get_parallel_devices(devices, expected):
    with override_hardware(**EIGHT):
        assert XLAAccelerator.get_parallel_devices(devices) == expected


@pytest.mark.parametrize("devices", [2, 4, 0, -2, 16, [8], [0, 1], "0,1", [-1], []])
def test_parse_devices_errors(devices):
    with override_hardware(**EIGHT), pytest.raises(ValueError) as info:
        XLAAccelerator.parse_devices(devices)
    message = str(info.value)
    assert f"devices={devices!r}" in message
    assert "use 1, 8 (all)" in message
    assert "this machine has 8 XLA devices" in message


@pytest.mark.parametrize(("devices", "error"), [(1.0, TypeError), ("tpu", ValueError), ([True], TypeError)])
def test_parse_devices_bad_types_and_strings(devices, error):
    with override_hardware(**EIGHT), pytest.raises(error) as info:
        XLAAccelerator.parse_devices(devices)
    assert repr(devices) in str(info.value)


def test_single_device_host():
    with override_hardware(xla_available=True, xla_device_count=1):
        assert XLAAccelerator.parse_devices("auto") == 1
        assert XLAAccelerator.parse_devices([0]) == [0]
        with pytest.raises(ValueError, match="this machine has 1 XLA device"):
            XLAAccelerator.parse_devices(2)


def test_availability():
    with override_hardware(**EIGHT):
        assert XLAAccelerator.is_available()
        assert XLAAccelerator.auto_device_count() == 8
    with override_hardware(xla_available=True, xla_device_count=0):
        assert not XLAAccelerator.is_available()
        with pytest.raises(ValueError, match="this machine has no XLA devices"):
            XLAAccelerator.parse_devices("auto")
    with override_hardware(xla_available=False):
        assert not XLAAccelerator.is_available()
        assert XLAAccelerator.auto_device_count() == 0


@pytest.mark.skipif(module_available("torch_xla"), reason="a real torch_xla is installed")
def test_is_available_is_false_when_the_runtime_cannot_answer():
    # torch_xla claimed present but its runtime cannot be imported: not available, and no exception escapes
    with override_hardware(xla_available=True):
        assert not XLAAccelerator.is_available()


def test_construction_needs_torch_xla():
    with override_hardware(xla_available=False), pytest.raises(MissingDependencyError, match="pip install torch-xla"):
        XLAAccelerator()
    with override_hardware(**EIGHT):
        assert repr(XLAAccelerator()) == "XLAAccelerator()"


def test_setup_device_checks_the_type():
    with override_hardware(**EIGHT):
        accelerator = XLAAccelerator()
    accelerator.setup_device(torch.device("xla", 3))
    with pytest.raises(ValueError, match="XLAAccelerator sets up 'xla' devices, got cuda:0"):
        accelerator.setup_device(torch.device("cuda", 0))


@pytest.fixture
def fake_torch_xla():
    """A minimal ``torch_xla`` package (only what the accelerator imports lazily), removed afterwards."""
    if module_available("torch_xla"):
        pytest.skip("a real torch_xla is installed; the tests_xla session exercises it")
    calls = []

    def get_memory_info(device):
        calls.append(device)
        return {"bytes_used": 3 << 20, "bytes_limit": 16 << 30, "peak_bytes_used": 5 << 20}

    modules = {}
    for name in ("torch_xla", "torch_xla.core", "torch_xla.core.xla_model"):
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=name != "torch_xla.core.xla_model")
        modules[name] = module
    modules["torch_xla.core.xla_model"].get_memory_info = get_memory_info
    sys.modules.update(modules)
    module_available.cache_clear()
    try:
        yield calls
    finally:
        for name in modules:
            sys.modules.pop(name, None)
        module_available.cache_clear()


def test_get_device_stats_imports_torch_xla_lazily(fake_torch_xla):
    with override_hardware(**EIGHT):
        accelerator = XLAAccelerator()
    device = torch.device("xla", 2)
    stats = accelerator.get_device_stats(device)
    assert stats == {"bytes_used": 3 << 20, "bytes_limit": 16 << 30, "peak_bytes_used": 5 << 20}
    assert fake_torch_xla == [device]
    with pytest.raises(ValueError, match="got cpu"):
        accelerator.get_device_stats(torch.device("cpu"))


@pytest.mark.skipif(module_available("torch_xla"), reason="a real torch_xla is installed")
def test_get_device_stats_without_torch_xla_names_the_install_command():
    with override_hardware(**EIGHT):
        accelerator = XLAAccelerator()
    with pytest.raises(MissingDependencyError, match=r"XLAAccelerator\.get_device_stats requires `torch-xla`"):
        accelerator.get_device_stats(torch.device("xla", 0))


@RunIf(xla=True)
def test_real_xla_devices():
    import torch_xla.core.xla_model as xm

    assert XLAAccelerator.is_available()
    count = xla_device_count()
    assert XLAAccelerator.parse_devices("auto") == count
    assert len(XLAAccelerator.get_parallel_devices("auto")) == count
    accelerator = XLAAccelerator()
    device = xm.xla_device()
    accelerator.setup_device(device)
    stats = accelerator.get_device_stats(device)
    assert stats
    assert all(isinstance(value, (int, float)) for value in stats.values())
