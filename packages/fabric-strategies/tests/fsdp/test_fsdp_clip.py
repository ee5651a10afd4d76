"""Gradient-norm clipping on plain tensors (the DTensor path runs in test_fsdp_distributed.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fabric_strategies.fsdp import clip_grad_norm, total_grad_norm


def _with_grads(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3))
    model(torch.randn(6, 5)).pow(2).sum().backward()
    return model


@pytest.mark.parametrize("norm_type", [2.0, 1, float("inf")])
def test_matches_torch_clip_grad_norm(norm_type):
    ours, theirs = _with_grads(), _with_grads()
    expected = nn.utils.clip_grad_norm_(theirs.parameters(), 0.5, norm_type=norm_type)
    total = clip_grad_norm(ours.parameters(), 0.5, norm_type=norm_type)
    torch.testing.assert_close(total, expected)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_parameters_without_gradients_are_skipped():
    model = nn.Linear(2, 2)
    assert float(total_grad_norm(model.parameters(), 2.0, torch.device("cpu"))) == 0.0
    assert float(clip_grad_norm(model.parameters(), 1.0)) == 0.0


def test_a_nonfinite_norm_raises_and_leaves_the_gradients_alone_unless_allowed():
    model = _with_grads()
    model[0].weight.grad[0, 0] = float("inf")
    saved = [p.grad.clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match=r"order 2.0 of the gradients is inf.*error_if_nonfinite=False"):
        clip_grad_norm(model.parameters(), 1.0)
    for p, g in zip(model.parameters(), saved):
        assert torch.equal(p.grad, g)
    assert math.isinf(float(clip_grad_norm(model.parameters(), 1.0, error_if_nonfinite=False)))


def test_invalid_arguments_are_named():
    model = _with_grads()
    with pytest.raises(ValueError, match=r"max_norm must be a number >= 0, got -1"):
        clip_grad_norm(model.parameters(), -1)
    with pytest.raises(ValueError, match=r"clip_grad_norm\(norm_type=0\) is invalid"):
        clip_grad_norm(model.parameters(), 1.0, norm_type=0)
    with pytest.raises(ValueError, match=r"clip_grad_norm\(norm_type='fro'\) is invalid"):
        clip_grad_norm(model.parameters(), 1.0, norm_type="fro")
    with pytest.raises(TypeError, match=r"clip_grad_norm\(norm_type=None\) must be a number or 'inf'"):
        clip_grad_norm(model.parameters(), 1.0, norm_type=None)  # type: ignore[arg-type]


def test_inf_by_name_is_the_largest_absolute_gradient():
    # Fabric's clip_gradients accepts norm_type='inf' (as torch does); the FSDP clipping must take it too
    model = _with_grads()
    expected = max(p.grad.abs().max().item() for p in model.parameters())
    for name in ("inf", "INF"):
        assert float(clip_grad_norm(model.parameters(), 1e9, norm_type=name)) == pytest.approx(expected)
