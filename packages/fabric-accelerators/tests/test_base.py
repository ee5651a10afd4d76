"""The Accelerator base: abstract methods, defaults and registration under a name and aliases."""

from __future__ import annotations

import pytest
import torch

from fabric_accelerators import Accelerator, CPUAccelerator
from fabric_utils import Registry


class _Minimal(Accelerator):
    """A minimal concrete accelerator for the tests."""

    name = "minimal"
    aliases = ("min", "tiny")

    def setup_device(self, device: torch.device) -> None:
        if device.type != "cpu":
            raise ValueError(device)

    @staticmethod
    def parse_devices(devices):
        return CPUAccelerator.parse_devices(devices)

    @staticmethod
    def get_parallel_devices(devices):
        return CPUAccelerator.get_parallel_devices(devices)

    @staticmethod
    def auto_device_count() -> int:
        return 1

    @staticmethod
    def is_available() -> bool:
        return True


def test_base_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        Accelerator()  # type: ignore[abstract]


def test_defaults():
    accelerator = _Minimal()
    assert accelerator.get_device_stats(torch.device("cpu")) == {}
    assert accelerator.teardown() is None
    assert repr(accelerator) == "_Minimal()"
    assert Accelerator.priority == 0
    assert Accelerator.aliases == ()


def test_register_accelerators_registers_name_and_aliases():
    registry: Registry[Accelerator] = Registry("accelerator")
    _Minimal.register_accelerators(registry)
    assert list(registry) == ["min", "minimal", "tiny"]
    assert {registry.get(name) for name in registry} == {_Minimal}
    descriptions = registry.descriptions()
    assert descriptions["minimal"] == "A minimal concrete accelerator for the tests."
    assert descriptions["tiny"] == "Alias of 'minimal' (_Minimal)."
    with pytest.raises(ValueError, match="already registered"):
        _Minimal.register_accelerators(registry)


def test_register_without_a_name():
    class Nameless(_Minimal):
        name = ""

    with pytest.raises(ValueError, match="Nameless has no `name`"):
        Nameless.register_accelerators(Registry("accelerator"))
