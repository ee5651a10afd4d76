"""Clipping arguments are checked before any gradient is touched (``Strategy.clip_gradients_norm/value``)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from fabric_strategies import SingleDeviceStrategy
from fabric_strategies.clipping import check_clip_threshold, check_norm_type


@pytest.mark.parametrize(
    ("value", "error"),
    [
        *[(value, ValueError) for value in (-1.0, 0, math.inf, math.nan)],
        *[(value, TypeError) for value in ("1", True, None, torch.tensor(1.0))],
    ],
)
def test_threshold_must_be_a_finite_number_above_zero(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        check_clip_threshold("max_norm", value)
    assert f"max_norm={value!r}" in str(info.value)


@pytest.mark.parametrize("value", [1, 0.5, 1e-8, 1e8])
def test_threshold_accepts_positive_numbers(value: float) -> None:
    check_clip_threshold("clip_val", value)


@pytest.mark.parametrize("norm_type", [2.0, 1, 0.5, math.inf, "inf"])
def test_norm_type_valid_values(norm_type: Any) -> None:
    check_norm_type(norm_type)


@pytest.mark.parametrize(
    ("norm_type", "error"), [(0, ValueError), (-2, ValueError), ("fro", ValueError), (None, TypeError)]
)
def test_norm_type_invalid_values(norm_type: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=f"norm_type={norm_type!r}"):
        check_norm_type(norm_type)


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
