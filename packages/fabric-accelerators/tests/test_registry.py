"""ACCELERATOR_REGISTRY, "auto" and "gpu" resolution, and third-party accelerators through entry points."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from fabric_accelerators import (
    ACCELERATOR_REGISTRY,
    Accelerator,
    AcceleratorUnavailableError,
    CPUAccelerator,
    CUDAAccelerator,
    MPSAccelerator,
    XLAAccelerator,
    available_accelerators,
    resolve_accelerator_name,
    resolve_gpu_accelerator,
    select_auto_accelerator,
)
from fabric_utils import Registry, UnknownNameError, override_hardware

BUILTINS = (CPUAccelerator, CUDAAccelerator, MPSAccelerator, XLAAccelerator)


def hardware(cuda: int = 0, mps: bool = False, xla: int = 0):
    """Fake every probe, so the answer does not depend on the machine the tests run on."""
    return override_hardware(cuda_device_count=cuda, mps_available=mps, xla_available=xla > 0, xla_device_count=xla)


def test_builtin_names():
    assert list(ACCELERATOR_REGISTRY) == ["cpu", "cuda", "mps", "tpu", "xla"]
    assert "gpu" not in ACCELERATOR_REGISTRY
    assert "auto" not in ACCELERATOR_REGISTRY
    assert ACCELERATOR_REGISTRY.entry_point_group == "fabric.accelerators"
    for cls in BUILTINS:
        assert ACCELERATOR_REGISTRY.get(cls.name) is cls
    assert ACCELERATOR_REGISTRY.get("tpu") is XLAAccelerator
    assert ACCELERATOR_REGISTRY.descriptions()["tpu"] == "Alias of 'xla' (XLAAccelerator)."
    assert all(ACCELERATOR_REGISTRY.descriptions().values())


def test_priorities_order_auto():
    assert XLAAccelerator.priority > CUDAAccelerator.priority > MPSAccelerator.priority > CPUAccelerator.priority


def test_create_builds_instances():
    assert isinstance(ACCELERATOR_REGISTRY.create("cpu"), CPUAccelerator)
    assert isinstance(ACCELERATOR_REGISTRY.create("cuda"), CUDAAccelerator)
    with hardware(xla=8):
        assert isinstance(ACCELERATOR_REGISTRY.create("tpu"), XLAAccelerator)


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ({}, "cpu"),
        ({"mps": True}, "mps"),
        ({"cuda": 1}, "cuda"),
        ({"cuda": 2, "mps": True}, "cuda"),
        ({"cuda": 4, "xla": 8}, "xla"),
        ({"xla": 1}, "xla"),
    ],
)
def test_select_auto_accelerator(machine, expected):
    with hardware(**machine):
        assert select_auto_accelerator() == expected
        assert resolve_accelerator_name("auto") == expected


def test_select_auto_ignores_xla_without_devices():
    with override_hardware(cuda_device_count=2, mps_available=False, xla_available=True, xla_device_count=0):
        assert select_auto_accelerator() == "cuda"


def test_select_auto_does_not_initialise_cuda():
    select_auto_accelerator()
    available_accelerators()
    assert not torch.cuda.is_initialized()


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ({}, ["cpu"]),
        ({"cuda": 2}, ["cpu", "cuda"]),
        ({"mps": True}, ["cpu", "mps"]),
        ({"xla": 4}, ["cpu", "tpu", "xla"]),
    ],
)
def test_available_accelerators(machine, expected):
    with hardware(**machine):
        assert available_accelerators() == expected


@pytest.mark.parametrize(
    ("machine", "expected"), [({"cuda": 1}, "cuda"), ({"mps": True}, "mps"), ({"cuda": 2, "mps": True}, "cuda")]
)
def test_resolve_gpu(machine, expected):
    with hardware(**machine):
        assert resolve_gpu_accelerator() == expected
        assert resolve_accelerator_name("gpu") == expected


def test_resolve_gpu_without_gpus():
    with hardware(xla=8), pytest.raises(AcceleratorUnavailableError) as info:
        resolve_gpu_accelerator()
    message = str(info.value)
    assert "accelerator='gpu'" in message
    assert "needs CUDA or MPS" in message
    assert "Available accelerators: cpu, tpu, xla." in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("name", "expected"), [("cpu", "cpu"), ("cuda", "cuda"), ("tpu", "xla"), ("xla", "xla")])
def test_resolve_known_names(name, expected):
    with hardware(cuda=1, xla=8):
        assert resolve_accelerator_name(name) == expected


@pytest.mark.parametrize("name", ["cuda", "mps", "tpu", "xla"])
def test_resolve_unavailable_names(name):
    with hardware(), pytest.raises(AcceleratorUnavailableError) as info:
        resolve_accelerator_name(name)
    assert f"`accelerator={name!r}` is not available on this machine. Available accelerators: cpu." in str(info.value)


def test_resolve_unknown_name_lists_choices():
    with pytest.raises(UnknownNameError) as info:
        resolve_accelerator_name("cudaa")
    assert str(info.value) == (
        "Unknown accelerator 'cudaa'. Choose one of: auto, gpu, cpu, cuda, mps, tpu, xla (or register your own)."
    )


@pytest.mark.parametrize("name", [None, 1, CPUAccelerator])
def test_resolve_rejects_non_strings(name):
    with pytest.raises(TypeError, match="must be a name or an Accelerator") as info:
        resolve_accelerator_name(name)  # type: ignore[arg-type]
    assert repr(name) in str(info.value)


class _Fast(Accelerator):
    """A test accelerator whose availability and priority the tests set."""

    name = "fast"
    priority = 50
    available = True

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

    @classmethod
    def is_available(cls) -> bool:  # type: ignore[override]
        return cls.available


class _Other(_Fast):
    name = "other"


def _registry(*classes: type[Accelerator]) -> Registry[Accelerator]:
    registry: Registry[Accelerator] = Registry("accelerator")
    for cls in classes:
        cls.register_accelerators(registry)
    return registry


def test_custom_registry_with_a_higher_priority_accelerator(monkeypatch):
    registry = _registry(*BUILTINS, _Fast)
    with hardware(cuda=2):
        assert select_auto_accelerator(registry) == "fast"
        monkeypatch.setattr(_Fast, "available", False)
        assert select_auto_accelerator(registry) == "cuda"
        with pytest.raises(AcceleratorUnavailableError, match="Available accelerators: cpu, cuda"):
            resolve_accelerator_name("fast", registry)
    monkeypatch.setattr(_Fast, "priority", 1)
    monkeypatch.setattr(_Fast, "available", True)
    assert select_auto_accelerator(registry) == "cpu"


def test_ties_go_to_the_name_sorted_first():
    assert select_auto_accelerator(_registry(_Other, _Fast)) == "fast"


def test_factories_that_are_not_accelerator_classes():
    registry = _registry(CPUAccelerator)
    registry.register("lazy", lambda: CPUAccelerator(), description="built by a function")
    assert select_auto_accelerator(registry) == "cpu"
    assert available_accelerators(registry) == ["cpu"]
    assert resolve_accelerator_name("lazy", registry) == "lazy"


def test_empty_registry():
    with pytest.raises(AcceleratorUnavailableError, match="registered: none"):
        select_auto_accelerator(Registry("accelerator"))


PLUGIN_MODULE = textwrap.dedent(
    '''
    import torch
    from fabric_accelerators import Accelerator, CPUAccelerator


    class PluginAccelerator(Accelerator):
        """An accelerator shipped by a third-party package."""

        name = "plugin"
        aliases = ("plugin_alias",)
        priority = 1000

        def setup_device(self, device):
            if device.type != "cpu":
                raise ValueError(device)

        @staticmethod
        def parse_devices(devices):
            return CPUAccelerator.parse_devices(devices)

        @staticmethod
        def get_parallel_devices(devices):
            return [torch.device("cpu")] * PluginAccelerator.parse_devices(devices)

        @staticmethod
        def auto_device_count():
            return 1

        @staticmethod
        def is_available():
            return True
    '''
)


def test_third_party_accelerator_through_an_entry_point(tmp_path, monkeypatch):
    len(ACCELERATOR_REGISTRY)  # the package's own registry has read its entry points before the plugin appears
    (tmp_path / "fabric_accel_plugin_example.py").write_text(PLUGIN_MODULE)
    dist_info = tmp_path / "fabric_accel_plugin_example-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fabric-accel-plugin-example\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[fabric.accelerators]\nplugin = fabric_accel_plugin_example:PluginAccelerator.register_accelerators\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        registry: Registry[Accelerator] = Registry("accelerator", entry_point_group="fabric.accelerators")
        for cls in BUILTINS:
            cls.register_accelerators(registry)
        assert list(registry) == ["cpu", "cuda", "mps", "plugin", "plugin_alias", "tpu", "xla"]
        assert select_auto_accelerator(registry) == "plugin"
        assert resolve_accelerator_name("plugin_alias", registry) == "plugin"
        accelerator = registry.create("plugin")
        assert type(accelerator).__name__ == "PluginAccelerator"
        assert type(accelerator).get_parallel_devices("2") == [torch.device("cpu")] * 2
        assert "plugin" not in ACCELERATOR_REGISTRY
    finally:
        sys.modules.pop("fabric_accel_plugin_example", None)
