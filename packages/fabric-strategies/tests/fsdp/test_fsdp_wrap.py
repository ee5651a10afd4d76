"""Module policies: which submodules get an FSDP unit (bottom-up) or activation checkpointing."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from fabric_strategies.fsdp import apply_activation_checkpointing
from fabric_strategies.fsdp.wrap import is_activation_checkpointed, resolve_policy, wrap_targets


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.sin(self.linear(x))


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(Counting(), nn.Sequential(Counting(), nn.ReLU()), nn.Linear(4, 2))


def test_policies_from_classes_callables_and_errors():
    model = _model()
    by_class = resolve_policy({Counting}, "policy")
    assert by_class is not None
    assert by_class(model[0])
    assert not by_class(model[2])
    assert resolve_policy(nn.Linear, "policy")(model[2])  # type: ignore[misc]
    assert resolve_policy([], "policy") is None
    assert resolve_policy(None, "policy") is None
    custom = resolve_policy(lambda m: isinstance(m, nn.ReLU), "policy")
    assert custom is not None
    assert custom(model[1][1])
    assert pickle.loads(pickle.dumps(by_class))(model[0])  # class policies survive spawn
    with pytest.raises(TypeError, match=r"my_policy must hold torch.nn.Module subclasses"):
        resolve_policy({str}, "my_policy")
    with pytest.raises(TypeError, match=r"my_policy must be a set of module classes.*got 3"):
        resolve_policy(3, "my_policy")  # type: ignore[arg-type]


def test_wrap_targets_lists_children_before_parents_and_never_the_root():
    model = _model()
    targets = wrap_targets(model, lambda m: isinstance(m, (Counting, nn.Sequential, nn.Linear)))
    names = {id(module): name for name, module in model.named_modules()}
    order = [names[id(m)] for m in targets]
    assert "" not in order
    assert set(order) == {"0", "0.linear", "1", "1.0", "1.0.linear", "2"}
    for name in order:  # every module comes after all of its descendants
        descendants = [other for other in order if other.startswith(name + ".")]
        assert all(order.index(d) < order.index(name) for d in descendants)
    assert wrap_targets(model, None) == []


def test_activation_checkpointing_recomputes_in_backward_with_the_same_gradients():
    reference, checkpointed = _model(), _model()
    changed = apply_activation_checkpointing(checkpointed, resolve_policy({Counting}, "policy"))
    assert changed == ["0", "1.0"]
    assert apply_activation_checkpointing(checkpointed, resolve_policy({Counting}, "policy")) == []  # not twice
    assert is_activation_checkpointed(checkpointed[0])
    assert not is_activation_checkpointed(reference[0])
    assert list(checkpointed.state_dict()) == list(reference.state_dict())  # no wrapper, same keys
    x = torch.randn(3, 4)
    reference(x).sum().backward()
    checkpointed(x).sum().backward()
    for a, b in zip(reference.parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    assert (reference[0].calls, checkpointed[0].calls) == (1, 2)  # the forward ran again during backward
    with torch.no_grad():
        checkpointed(x)
    assert checkpointed[0].calls == 3  # nothing to recompute without autograd
    assert apply_activation_checkpointing(checkpointed, None) == []
