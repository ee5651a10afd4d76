"""XLAPrecision: hooks, the missing-torch_xla error, and the step through ``xm.optimizer_step``."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from fabric_precision import XLAPrecision
from fabric_testing import RunIf
from fabric_utils import MissingDependencyError, override_hardware


def test_missing_torch_xla_is_a_clear_error() -> None:
    with override_hardware(xla_available=False), pytest.raises(MissingDependencyError, match="pip install torch-xla"):
        XLAPrecision("bf16-true")


def test_bad_precision_is_rejected_first() -> None:
    with pytest.raises(ValueError, match=r"Unknown XLA precision '16-mixed'\. Choose one of: 32-true, 16-true"):
        XLAPrecision("16-mixed")  # type: ignore[arg-type]


def test_32_true_needs_nothing_on_the_hot_path(fake_torch_xla: list[dict[str, Any]]) -> None:
    plugin = XLAPrecision()
    assert plugin.precision == "32-true"
    assert plugin.dtype == torch.float32
    assert not plugin.needs_forward_context
    assert not plugin.needs_input_conversion
    assert not plugin.needs_output_conversion
    module = nn.Linear(2, 2)
    assert plugin.convert_module(module) is module


@pytest.mark.parametrize(("precision", "dtype"), [("16-true", torch.float16), ("bf16-true", torch.bfloat16)])
def test_half_precisions_convert_without_environment_variables(
    precision: str, dtype: torch.dtype, fake_torch_xla: list[dict[str, Any]]
) -> None:
    plugin = XLAPrecision(precision)  # type: ignore[arg-type]  # the hygiene fixture fails any env var written
    assert (plugin.needs_forward_context, plugin.needs_input_conversion, plugin.needs_output_conversion) == (
        True,
        True,
        True,
    )
    module = plugin.convert_module(nn.Linear(2, 2))
    assert module.weight.dtype == dtype
    with plugin.tensor_init_context():
        assert torch.zeros(1).dtype == dtype
    with plugin.forward_context():
        out = module(plugin.convert_input(torch.ones(1, 2)))
    assert out.dtype == dtype
    assert plugin.convert_output(out).dtype == torch.float32


def test_optimizer_step_goes_through_xla_model(fake_torch_xla: list[dict[str, Any]]) -> None:
    plugin = XLAPrecision("bf16-true")
    module = plugin.convert_module(nn.Linear(2, 1))
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    module(plugin.convert_input(torch.ones(3, 2))).sum().backward()
    before = module.weight.detach().clone()
    plugin.optimizer_step(optimizer, closure=None)
    assert fake_torch_xla == [{"closure": None}]
    assert not torch.equal(before, module.weight)


@RunIf(xla=True)
def test_real_xla_device_step() -> None:
    import torch_xla.core.xla_model as xm

    plugin = XLAPrecision("bf16-true")
    device = xm.xla_device()
    module = plugin.convert_module(nn.Linear(4, 2)).to(device)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    before = module.weight.detach().cpu().clone()
    with plugin.forward_context():
        out = module(plugin.convert_input(torch.randn(3, 4, device=device)))
    plugin.convert_output(out).sum().backward()
    plugin.optimizer_step(optimizer)
    xm.mark_step()
    assert module.weight.dtype == torch.bfloat16
    assert not torch.equal(before, module.weight.detach().cpu())
