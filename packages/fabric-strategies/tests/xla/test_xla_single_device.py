"""SingleDeviceXLAStrategy against the fake torch_xla."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch

from fabric_io import XLACheckpointIO
from fabric_precision import XLAPrecision
from fabric_strategies import STRATEGY_REGISTRY, SingleDeviceXLAStrategy
from fabric_testing import TinyMLP
from fabric_utils import MissingDependencyError, override_hardware


def test_requires_torch_xla() -> None:
    with override_hardware(xla_available=False), pytest.raises(MissingDependencyError, match="pip install torch-xla"):
        SingleDeviceXLAStrategy()


def test_device_choices(fake_xla: ModuleType) -> None:
    assert SingleDeviceXLAStrategy().root_device == torch.device("xla", 0)
    assert SingleDeviceXLAStrategy(3).root_device == torch.device("xla", 3)
    assert SingleDeviceXLAStrategy("xla:1").root_device == torch.device("xla", 1)
    with pytest.raises(ValueError, match="runs on an 'xla' device, got cuda:0"):
        SingleDeviceXLAStrategy("cuda:0")
    with pytest.raises(TypeError, match=r"got 1\.5"):
        SingleDeviceXLAStrategy(1.5)  # type: ignore[arg-type]
    strategy = SingleDeviceXLAStrategy()
    strategy.complete(parallel_devices=[torch.device("xla", 2)])
    assert strategy.root_device == torch.device("xla", 2)
    assert isinstance(STRATEGY_REGISTRY.create("single_xla"), SingleDeviceXLAStrategy)
    assert fake_xla.state.calls == [], "the device is resolved through torch_xla only when set up"


def test_parts_default_to_the_xla_ones(fake_xla: ModuleType) -> None:
    strategy = SingleDeviceXLAStrategy()
    assert isinstance(strategy.precision, XLAPrecision)
    assert isinstance(strategy.checkpoint_io, XLACheckpointIO)
    assert strategy.default_precision("16-true").precision == "16-true"
    with pytest.raises(ValueError, match="does not support precision '16-mixed'"):
        strategy.default_precision("16-mixed")


def test_trains_and_checkpoints_through_torch_xla(fake_xla: ModuleType, tmp_path: Path) -> None:
    strategy = SingleDeviceXLAStrategy(1, precision=XLAPrecision("bf16-true"))
    strategy.setup_environment()
    assert fake_xla.state.arguments("device") == [1], "the requested index reaches torch_xla"
    model = strategy.precision.convert_module(TinyMLP(4, 8, 2))
    strategy.module_to_device(model)
    model = strategy.setup_module(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(strategy.precision.convert_input(torch.randn(3, 4))).float().sum()
    strategy.backward(loss, model)
    strategy.optimizer_step(optimizer)
    assert fake_xla.state.names().count("optimizer_step") == 1
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert not any(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    strategy.save_checkpoint(tmp_path / "ckpt.pt", {"model": model, "step": 1})
    assert "sync" in fake_xla.state.names()
    fresh = strategy.precision.convert_module(TinyMLP(4, 8, 2))
    assert strategy.load_checkpoint(tmp_path / "ckpt.pt", {"model": fresh}) == {"step": 1}
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))
    strategy.teardown()
    assert strategy.root_device == torch.device("xla", 1)
