"""CPUAccelerator: devices is a number of processes."""

from __future__ import annotations

import pytest
import torch

from fabric_accelerators import CPUAccelerator


@pytest.mark.parametrize(("devices", "expected"), [(1, 1), (3, 3), ("2", 2), ("auto", 1)])
def test_parse_devices(devices, expected):
    assert CPUAccelerator.parse_devices(devices) == expected
    assert CPUAccelerator.get_parallel_devices(devices) == [torch.device("cpu")] * expected


def test_more_processes_than_cores_is_allowed():
    # oversubscribing the CPU is slow but valid (e.g. testing a 4-rank setup on 2 cores)
    assert CPUAccelerator.parse_devices(64) == 64


@pytest.mark.parametrize(
    ("devices", "error"), [(0, ValueError), (-1, ValueError), (-5, ValueError), ([0], TypeError), (1.5, TypeError)]
)
def test_parse_devices_errors(devices, error):
    with pytest.raises(error) as info:
        CPUAccelerator.parse_devices(devices)
    assert repr(devices) in str(info.value)


def test_class_facts():
    assert CPUAccelerator.name == "cpu"
    assert CPUAccelerator.is_available() is True
    assert CPUAccelerator.auto_device_count() == 1
    assert CPUAccelerator.priority < 20


def test_setup_device_checks_the_type():
    accelerator = CPUAccelerator()
    accelerator.setup_device(torch.device("cpu"))
    with pytest.raises(ValueError, match="CPUAccelerator sets up 'cpu' devices, got cuda:0"):
        accelerator.setup_device(torch.device("cuda", 0))
    accelerator.teardown()
    assert accelerator.get_device_stats(torch.device("cpu")) == {}
    assert repr(accelerator) == "CPUAccelerator()"
