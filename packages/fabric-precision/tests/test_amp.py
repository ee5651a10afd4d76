"""``16-mixed`` and ``bf16-mixed``: MixedPrecision with real autocast and a real GradScaler on CPU."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fabric_precision import MixedPrecision
from fabric_testing import RunIf


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


def training_step(
    plugin: MixedPrecision, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor
) -> object:
    """One step the way a strategy drives the hooks."""
    optimizer.zero_grad()
    with plugin.forward_context():
        out = model(plugin.convert_input(x))
    loss = plugin.convert_output(out).pow(2).mean()
    scaled = plugin.pre_backward(loss, model)
    plugin.backward(scaled, model)
    plugin.post_backward(scaled, model)
    return plugin.optimizer_step(optimizer)


@pytest.mark.parametrize(("precision", "dtype"), [("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16)])
def test_forward_runs_under_real_autocast(precision: str, dtype: torch.dtype) -> None:
    plugin = MixedPrecision(precision, device_type="cpu")  # type: ignore[arg-type]
    assert plugin.precision == precision
    assert plugin.dtype == dtype
    assert (plugin.needs_forward_context, plugin.needs_input_conversion, plugin.needs_output_conversion) == (
        True,
        True,
        True,
    )
    model = plugin.convert_module(make_model())
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    x = torch.randn(3, 4, dtype=torch.float64)
    with plugin.forward_context():
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == dtype
        converted = plugin.convert_input(x)
        out = model(converted)
    assert converted.dtype == torch.float32
    assert out.dtype == dtype
    assert plugin.convert_output(out).dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")


def test_bf16_mixed_has_no_scaler_and_no_state() -> None:
    plugin = MixedPrecision("bf16-mixed")
    assert plugin.scaler is None
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    training_step(plugin, model, optimizer, torch.randn(8, 4))
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert plugin.state_dict() == {}
    loss = torch.tensor(2.0, requires_grad=True)
    assert plugin.pre_backward(loss, None) is loss


def test_16_mixed_scales_the_loss_with_a_real_cpu_grad_scaler() -> None:
    plugin = MixedPrecision("16-mixed", device_type="cpu")
    assert isinstance(plugin.scaler, torch.amp.GradScaler)
    assert plugin.scaler.is_enabled()
    loss = torch.tensor(3.0, requires_grad=True)
    scaled = plugin.pre_backward(loss, None)
    assert scaled.item() == 3.0 * 2.0**16


def test_16_mixed_finite_step_updates_and_unscales() -> None:
    plugin = MixedPrecision("16-mixed")
    model = make_model()
    reference = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 4)
    with plugin.forward_context():
        loss = plugin.convert_output(model(plugin.convert_input(x))).pow(2).mean()
    plugin.backward(plugin.pre_backward(loss, model), model)
    assert plugin.scaler is not None
    scaled_grad = model[0].weight.grad.clone()
    plugin.unscale_gradients(optimizer)
    unscaled_grad = model[0].weight.grad
    torch.testing.assert_close(unscaled_grad * plugin.scaler.get_scale(), scaled_grad)
    # same gradient as float32 up to float16 rounding of the autocast matmuls
    reference(x).pow(2).mean().backward()
    torch.testing.assert_close(unscaled_grad, reference[0].weight.grad, atol=2e-2, rtol=2e-2)
    before = model[0].weight.detach().clone()
    plugin.optimizer_step(optimizer)  # unscaled already: the scaler must not unscale twice
    torch.testing.assert_close(model[0].weight, before - 0.1 * unscaled_grad)
    assert plugin.scaler.get_scale() == 2.0**16
    assert plugin.state_dict()["_growth_tracker"] == 1


@pytest.mark.parametrize("bad_value", [math.inf, math.nan])
def test_16_mixed_skips_the_step_when_a_gradient_is_not_finite(bad_value: float) -> None:
    plugin = MixedPrecision("16-mixed")
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    optimizer.zero_grad()
    with plugin.forward_context():
        loss = plugin.convert_output(model(plugin.convert_input(torch.randn(8, 4)))).sum()
    plugin.backward(plugin.pre_backward(loss, model), model)
    model[2].bias.grad[0] = bad_value
    before = [p.detach().clone() for p in model.parameters()]
    result = plugin.optimizer_step(optimizer)
    assert result is None
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert optimizer.state == {} or all(not s for s in optimizer.state.values())  # Adam never stepped
    assert plugin.scaler is not None
    assert plugin.scaler.get_scale() == 2.0**15  # backed off
    # the next finite step goes through
    training_step(plugin, model, optimizer, torch.randn(8, 4))
    assert not torch.equal(before[0], model[0].weight)


def test_16_mixed_scaler_state_round_trips() -> None:
    growth = dict(growth_interval=2, init_scale=1024.0)
    first = MixedPrecision("16-mixed", scaler=torch.amp.GradScaler("cpu", **growth))
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    data = [torch.randn(8, 4) for _ in range(4)]
    for x in data[:3]:
        training_step(first, model, optimizer, x)
    state = first.state_dict()
    assert state["scale"] == 2048.0  # grew once after two finite steps
    assert state["_growth_tracker"] == 1
    assert state["growth_interval"] == 2

    second = MixedPrecision("16-mixed")  # default settings, replaced by the checkpoint's
    second.load_state_dict(state)
    assert second.state_dict() == state
    twin = make_model()
    twin.load_state_dict(model.state_dict())
    twin_optimizer = torch.optim.SGD(twin.parameters(), lr=0.01)
    training_step(first, model, optimizer, data[3])
    training_step(second, twin, twin_optimizer, data[3])
    assert second.state_dict() == first.state_dict()
    assert second.state_dict()["scale"] == 4096.0
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_16_mixed_rejects_lbfgs_and_closures_but_accepts_closure_none() -> None:
    plugin = MixedPrecision("16-mixed")
    model = make_model()
    with pytest.raises(TypeError, match="LBFGS"):
        plugin.optimizer_step(torch.optim.LBFGS(model.parameters()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="closure"):
        plugin.optimizer_step(optimizer, closure=lambda: torch.tensor(0.0))
    plugin.backward(plugin.pre_backward(model(torch.randn(2, 4)).sum(), model), model)
    before = model[0].weight.detach().clone()
    plugin.optimizer_step(optimizer, closure=None)
    assert not torch.equal(before, model[0].weight)


def test_mixed_precision_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match=r"Unknown mixed precision '16-true'\. Choose one of: 16-mixed, bf16-mixed"):
        MixedPrecision("16-true")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Unknown autocast device type 'gpu'\. Choose one of: cpu, cuda"):
        MixedPrecision("bf16-mixed", device_type="gpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="takes no GradScaler"):
        MixedPrecision("bf16-mixed", scaler=torch.amp.GradScaler("cpu"))
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    assert MixedPrecision("16-mixed", scaler=scaler).scaler is scaler
    assert repr(MixedPrecision("bf16-mixed")) == "MixedPrecision(precision='bf16-mixed', device_type='cpu')"


@RunIf(min_cuda_gpus=1)
@pytest.mark.parametrize(("precision", "dtype"), [("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16)])
def test_mixed_precision_on_cuda(precision: str, dtype: torch.dtype) -> None:
    plugin = MixedPrecision(precision, device_type="cuda")  # type: ignore[arg-type]
    model = make_model().cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with plugin.forward_context():
        out = model(plugin.convert_input(torch.randn(8, 4, device="cuda")))
    assert out.dtype == dtype
    before = model[0].weight.detach().clone()
    training_step(plugin, model, optimizer, torch.randn(8, 4, device="cuda"))
    assert not torch.equal(before, model[0].weight)
    if precision == "16-mixed":
        assert plugin.scaler is not None
        assert plugin.scaler.is_enabled()
        assert plugin.state_dict()["scale"] == 2.0**16
