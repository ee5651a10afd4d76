"""MPSAccelerator: one device. Logic tested through override_hardware; the real path with RunIf(mps=True)."""

from __future__ import annotations

import pytest
import torch

from fabric_accelerators import MPSAccelerator
from fabric_testing import RunIf
from fabric_utils import override_hardware


@pytest.mark.parametrize("devices", [1, "1", -1, "-1", "auto", [0], (0,), "0,"])
def test_parse_devices_single_device(devices):
    with override_hardware(mps_available=True):
        assert MPSAccelerator.parse_devices(devices) == [0]
        assert MPSAccelerator.get_parallel_devices(devices) == [torch.device("mps", 0)]


@pytest.mark.parametrize(
    ("devices", "match"),
    [
        (2, "asks for 2 MPS devices, but this machine has 1 MPS device \\(index 0\\)"),
        ([1], "indices \\[1\\] that do not exist"),
        ([0, 0], "repeats"),
        (0, "asks for no MPS devices"),
    ],
)
def test_parse_devices_errors(devices, match):
    with override_hardware(mps_available=True), pytest.raises(ValueError, match=match):
        MPSAccelerator.parse_devices(devices)


def test_availability_follows_the_probe():
    with override_hardware(mps_available=True):
        assert MPSAccelerator.is_available()
        assert MPSAccelerator.auto_device_count() == 1
    with override_hardware(mps_available=False):
        assert not MPSAccelerator.is_available()
        assert MPSAccelerator.auto_device_count() == 0
        with pytest.raises(ValueError, match="this machine has no MPS devices"):
            MPSAccelerator.parse_devices("auto")


def test_setup_device_checks_the_type():
    with pytest.raises(ValueError, match="MPSAccelerator sets up 'mps' devices, got cpu"):
        MPSAccelerator().setup_device(torch.device("cpu"))
    with pytest.raises(ValueError, match="got cuda:0"):
        MPSAccelerator().get_device_stats(torch.device("cuda", 0))


@RunIf(mps=True)
def test_real_mps_device():
    accelerator = MPSAccelerator()
    device = MPSAccelerator.get_parallel_devices("auto")[0]
    accelerator.setup_device(device)
    tensor = torch.ones(1024, 1024, device=device)
    stats = accelerator.get_device_stats(device)
    assert stats["current_allocated_bytes"] >= tensor.numel() * tensor.element_size()
    assert stats["driver_allocated_bytes"] > 0
    accelerator.teardown()
