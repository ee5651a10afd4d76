"""The module and optimizer wrappers: pass-through, precision handling, marked methods, schedulers."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import pytest
import torch
from torch import nn

from fabric_accelerators import CPUAccelerator
from fabric_core.loader import FabricDataLoader
from fabric_core.wrappers import FabricModule, FabricOptimizer, is_wrapped, unwrap
from fabric_precision import Precision, precision_plugin
from fabric_strategies import SingleDeviceStrategy
from fabric_testing import TinyMLP


class Counting(nn.Module):
    """A real wrapper module (like DDP) that counts the forward calls going through it."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.module(*args, **kwargs)


class Generator(TinyMLP):
    def generate(self, x: torch.Tensor, steps: int = 2) -> torch.Tensor:
        for _ in range(steps):
            x = torch.cat([self(x)[:, :1], x[:, 1:]], dim=1) if x.shape[1] > 1 else x
        return self(x)


def test_full_precision_forward_is_one_extra_call() -> None:
    model = TinyMLP()
    wrapped = FabricModule(model, Precision())
    # FabricModule.__call__ -> model.__call__, nothing in between: no conversion, no context
    assert wrapped._plain
    assert wrapped._forward_target is model
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(len(inspect.stack(0))))
    wrapped(torch.randn(3, 32))
    model(torch.randn(3, 32))
    assert calls[0] == calls[1] + 1  # exactly one frame more than calling the model itself
    x = torch.randn(3, 32)
    assert torch.equal(wrapped(x), model(x))
    assert torch.equal(wrapped.forward(x), model(x))


def test_attributes_and_state_pass_through_to_the_original() -> None:
    model = TinyMLP()
    wrapped = FabricModule(Counting(model), Precision(), original_module=model)
    assert wrapped.module is model
    assert wrapped.layer1 is model.layer1
    wrapped.custom = 5
    assert model.custom == 5
    wrapped.extra = nn.Linear(2, 2)
    assert "extra" in dict(model.named_children())
    del wrapped.custom
    assert not hasattr(model, "custom")
    assert list(wrapped.state_dict()) == list(model.state_dict())
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    wrapped.load_state_dict(state)
    assert all(float(v.abs().sum()) == 0 for v in model.state_dict().values())
    assert [name for name, _ in wrapped.named_parameters()] == [name for name, _ in model.named_parameters()]
    assert len(list(wrapped.parameters())) == len(list(model.parameters()))
    wrapped.eval()
    assert not model.training
    assert not wrapped.training
    wrapped.train()
    assert model.layer1.training


def test_mixed_precision_forward_converts_inputs_and_outputs() -> None:
    model = TinyMLP()
    wrapped = FabricModule(model, precision_plugin("bf16-mixed"))
    seen: list[torch.dtype] = []
    model.layer2.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    out = wrapped(torch.randn(2, 32))
    assert seen == [torch.bfloat16]  # autocast ran inside
    assert out.dtype == torch.float32  # back to the default dtype


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_replacing_the_forward_module_routes_calls_to_the_new_one(precision: str) -> None:
    model = TinyMLP()
    wrapped = FabricModule(Counting(model), precision_plugin(precision), original_module=model)
    replacement = Counting(model)
    wrapped._forward_module = replacement
    assert wrapped.forward_module is replacement
    assert dict(wrapped.named_children())["_forward_module"] is replacement
    out = wrapped(torch.randn(2, 32))
    assert replacement.calls == 1
    assert out.dtype == torch.float32


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_deepcopy_of_a_wrapped_module_calls_its_own_copy(precision: str) -> None:
    import copy

    model = TinyMLP()
    wrapped = FabricModule(Counting(model), precision_plugin(precision), original_module=model)
    clone = copy.deepcopy(wrapped)
    clone(torch.randn(2, 32))
    assert clone.forward_module.calls == 1
    assert wrapped.forward_module.calls == 0
    assert clone.forward_module is dict(clone.named_children())["_forward_module"]


def test_half_true_precision_converts_float_inputs_only() -> None:
    precision = precision_plugin("bf16-true")
    model = precision.convert_module(TinyMLP())
    wrapped = FabricModule(model, precision)
    out = wrapped(torch.randn(2, 32, dtype=torch.float64))
    assert out.dtype == torch.float32
    embedding = FabricModule(precision.convert_module(nn.Embedding(4, 3)), precision)
    assert embedding(torch.tensor([1, 2])).dtype == torch.float32


def test_marked_methods_go_through_the_forward_module() -> None:
    model = Generator()
    counting = Counting(model)
    wrapped = FabricModule(counting, precision_plugin("bf16-mixed"), original_module=model)
    x = torch.randn(2, 32)
    assert wrapped.generate(x, steps=1).dtype == torch.float32  # a method of the model's class: routed unmarked
    assert counting.calls == 1
    wrapped.mark_forward_method("generate")
    out = wrapped.generate(x, steps=1)
    assert counting.calls == 2
    assert out.dtype == torch.float32
    assert "forward" not in model.__dict__  # forward restored
    assert torch.equal(wrapped(x), wrapped(x))
    assert counting.calls == 4
    with pytest.raises(ValueError, match="'missing'"):
        wrapped.mark_forward_method("missing")
    with pytest.raises(ValueError, match="forward"):
        wrapped.mark_forward_method("forward")


class Bypassing(nn.Module):
    """A wrapper whose forward never calls the wrapped module's forward."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return torch.zeros(1)


def test_methods_of_the_model_class_only_are_routed_and_an_impossible_route_raises() -> None:
    model = Generator()
    counting = Counting(model)
    wrapped = FabricModule(counting, Precision(), original_module=model)
    wrapped.train()
    list(wrapped.parameters())
    wrapped.requires_grad_(True)  # nn.Module's methods are not routed
    assert counting.calls == 0
    unwrapped = FabricModule(model, Precision())
    unwrapped.generate(torch.randn(2, 32))  # nothing wraps the model: a direct call, nothing to bypass
    assert "forward" not in model.__dict__
    blocked = FabricModule(Bypassing(model), Precision(), original_module=model)
    with pytest.raises(RuntimeError, match=r"Generator\.generate\(\).*Bypassing.*model\.module\.generate"):
        blocked.generate(torch.randn(2, 32))
    assert "forward" not in model.__dict__


def make_optimizer(callbacks: list[Any] | None = None) -> tuple[nn.Module, torch.optim.Optimizer, FabricOptimizer]:
    model = TinyMLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    strategy = SingleDeviceStrategy(accelerator=CPUAccelerator())
    strategy.complete(precision=Precision(), parallel_devices=[torch.device("cpu")])
    return model, optimizer, FabricOptimizer(optimizer, strategy, callbacks or [])


def test_optimizer_wrapper_behaves_as_the_optimizer() -> None:
    model, optimizer, wrapped = make_optimizer()
    assert isinstance(wrapped, torch.optim.SGD)
    assert isinstance(wrapped, FabricOptimizer)
    assert wrapped.optimizer is optimizer
    assert wrapped.param_groups is optimizer.param_groups
    assert wrapped.state is optimizer.state
    assert wrapped.defaults is optimizer.defaults
    model(torch.randn(4, 32)).sum().backward()
    before = model.layer1.weight.detach().clone()
    wrapped.step()
    assert not torch.equal(before, model.layer1.weight)
    assert len(optimizer.state) > 0
    wrapped.zero_grad()
    assert model.layer1.weight.grad is None
    wrapped.param_groups[0]["lr"] = 0.5
    assert optimizer.param_groups[0]["lr"] == 0.5
    state = wrapped.state_dict()
    assert state["param_groups"][0]["lr"] == 0.5


def test_loading_optimizer_state_through_the_wrapper_updates_the_optimizer() -> None:
    _, optimizer, wrapped = make_optimizer()
    state = optimizer.state_dict()
    state["param_groups"][0]["lr"] = 0.25
    wrapped.load_state_dict(state)
    assert optimizer.param_groups[0]["lr"] == 0.25
    assert wrapped.param_groups[0]["lr"] == 0.25


def test_lr_schedulers_drive_the_wrapped_optimizer() -> None:
    model, optimizer, wrapped = make_optimizer()
    scheduler = torch.optim.lr_scheduler.StepLR(wrapped, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for _ in range(2):
            model(torch.randn(4, 32)).sum().backward()
            wrapped.step()
            scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.025)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(wrapped, patience=0)
    plateau.step(1.0)
    plateau.step(2.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0025)


def test_step_with_closure_and_after_step_hook() -> None:
    calls: list[tuple[Any, Any]] = []

    class Hook:
        def on_after_optimizer_step(self, strategy: Any, optimizer: Any) -> None:
            calls.append((strategy, optimizer))

    model, optimizer, wrapped = make_optimizer([Hook(), object()])

    def closure() -> torch.Tensor:
        wrapped.zero_grad()
        loss = model(torch.randn(4, 32)).sum()
        loss.backward()
        return loss

    loss = wrapped.step(closure)
    assert isinstance(loss, torch.Tensor)
    assert len(calls) == 1
    assert calls[0][1] is optimizer


def test_is_wrapped_and_unwrap() -> None:
    model, optimizer, wrapped_optimizer = make_optimizer()
    wrapped_model = FabricModule(model, Precision())
    loader = FabricDataLoader(torch.utils.data.DataLoader(range(3)))
    assert all(is_wrapped(x) for x in (wrapped_model, wrapped_optimizer, loader))
    assert not any(is_wrapped(x) for x in (model, optimizer, loader.dataloader))
    assert unwrap(wrapped_model) is model
    assert unwrap(wrapped_optimizer) is optimizer
    assert unwrap(loader) is loader


def test_is_wrapped_sees_through_torch_compile() -> None:
    pytest.importorskip("filelock")  # torch.compile needs it; a bare torch install may lack it
    model = TinyMLP()
    compiled = torch.compile(FabricModule(model, Precision()))
    assert is_wrapped(compiled)
    assert unwrap(compiled) is model
    assert not is_wrapped(torch.compile(TinyMLP()))
