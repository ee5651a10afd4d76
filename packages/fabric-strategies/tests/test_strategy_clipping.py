"""Clipping arguments are checked before any gradient is touched (``Strategy.clip_gradients_norm/value``)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from fabric_strategies import SingleDeviceStrategy


def _strategy_with_gradients() -> tuple[SingleDeviceStrategy, torch.nn.Linear, torch.optim.Optimizer]:
    model = torch.nn.Linear(2, 1, bias=False)
    model.weight.grad = torch.tensor([[3.0, -4.0]])
    return SingleDeviceStrategy(), model, torch.optim.SGD(model.parameters(), lr=1.0)


@pytest.mark.parametrize(("max_norm", "norm_type"), [(-1.0, 2.0), (0.0, 2.0), (1.0, -1.0), (1.0, "fro")])
def test_clip_by_norm_refuses_bad_arguments_and_leaves_gradients_alone(max_norm: float, norm_type: Any) -> None:
    strategy, model, optimizer = _strategy_with_gradients()
    with pytest.raises(ValueError):
        strategy.clip_gradients_norm(model, optimizer, max_norm=max_norm, norm_type=norm_type)
    assert model.weight.grad.tolist() == [[3.0, -4.0]]


@pytest.mark.parametrize("clip_val", [-2.0, 0.0, math.nan])
def test_clip_by_value_refuses_bad_thresholds_and_leaves_gradients_alone(clip_val: float) -> None:
    strategy, model, optimizer = _strategy_with_gradients()
    with pytest.raises(ValueError, match=f"clip_val={clip_val!r}"):
        strategy.clip_gradients_value(model, optimizer, clip_val=clip_val)
    assert model.weight.grad.tolist() == [[3.0, -4.0]]
    strategy.clip_gradients_value(model, optimizer, clip_val=2.0)
    assert model.weight.grad.tolist() == [[2.0, -2.0]]
