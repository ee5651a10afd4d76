"""The example of docs/guide/extending.md ("The one way, end to end"), which includes the lines between the markers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# -- example -------------------------------------------------------------------------------------------------------
import torch
from typing_extensions import override

from fabric_accelerators import ACCELERATOR_REGISTRY, CPUAccelerator
from fabric_core import Fabric
from fabric_precision import PRECISION_REGISTRY, Precision
from fabric_strategies import STRATEGY_REGISTRY, SingleDeviceStrategy


class CountingCPU(CPUAccelerator):
    """The CPU, counting the processes that set it up."""

    name = "counting_cpu"
    priority = 0  # never chosen by accelerator="auto"
    set_ups = 0

    @override
    def setup_device(self, device: torch.device) -> None:
        super().setup_device(device)
        type(self).set_ups += 1


class FiniteLossPrecision(Precision):
    """32-true that refuses to run backward on a loss that is inf or NaN."""

    precision = "32-finite"

    @override
    def pre_backward(self, tensor: torch.Tensor, module: torch.nn.Module | None) -> torch.Tensor:
        if not torch.isfinite(tensor).all():
            raise FloatingPointError(f"The loss is {tensor.detach().cpu()}; stopping before backward.")
        return tensor


class ChannelsLastSingleDevice(SingleDeviceStrategy):
    """One device; the model's 4-D tensors in channels-last memory format."""

    @override
    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return super().setup_module(module).to(memory_format=torch.channels_last)


def register() -> None:
    """One `register` call per name, the way the built-ins are registered (an entry point can name each class)."""
    ACCELERATOR_REGISTRY.register("counting_cpu", CountingCPU)
    PRECISION_REGISTRY.register("32-finite", FiniteLossPrecision, description="32-true, finite losses only")
    STRATEGY_REGISTRY.register("channels_last", ChannelsLastSingleDevice)


def train_one_step() -> tuple[Fabric, torch.nn.Module]:
    fabric = Fabric(accelerator="counting_cpu", strategy="channels_last", precision="32-finite")
    model = torch.nn.Conv2d(3, 4, 3)
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    fabric.backward(model(torch.randn(2, 3, 8, 8)).sum())
    optimizer.step()
    return fabric, model


# -- end of example ------------------------------------------------------------------------------------------------


@pytest.fixture
def registered() -> Iterator[None]:
    register()
    try:
        yield
    finally:
        ACCELERATOR_REGISTRY.remove("counting_cpu")
        PRECISION_REGISTRY.remove("32-finite")
        STRATEGY_REGISTRY.remove("channels_last")


def test_the_example_trains_with_the_three_names_it_registers(registered: None) -> None:
    before = CountingCPU.set_ups
    fabric, model = train_one_step()
    assert type(fabric.strategy) is ChannelsLastSingleDevice
    assert type(fabric.strategy.accelerator) is CountingCPU
    assert type(fabric.strategy.precision) is FiniteLossPrecision
    assert CountingCPU.set_ups == before + 1
    assert model.weight.is_contiguous(memory_format=torch.channels_last)


def test_the_example_precision_stops_before_a_nan_loss_reaches_backward(registered: None) -> None:
    fabric = Fabric(accelerator="counting_cpu", strategy="channels_last", precision="32-finite")
    model = fabric.setup(torch.nn.Linear(2, 1))
    with pytest.raises(FloatingPointError, match="nan"):
        fabric.backward(model(torch.full((1, 2), float("nan"))).sum())


def test_the_extending_page_includes_this_example_in_under_60_lines() -> None:
    page = (Path(__file__).parents[3] / "docs" / "guide" / "extending.md").read_text(encoding="utf-8")
    assert "../../packages/fabric-core/tests/test_extending_example.py" in page
    source = Path(__file__).read_text(encoding="utf-8")
    start, end = source.index("# -- example"), source.index("# -- end of example")
    assert len(source[start:end].splitlines()) - 1 < 60
