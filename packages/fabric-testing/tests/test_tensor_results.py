"""Tensors returned by a rank arrive intact after the rank process has exited."""

import torch
from fabric_testing import run_processes


def f(rank, ws):
    return torch.full((1000,), float(rank))


def test_ret():
    out = run_processes(f)
    assert out[1][0] == 1.0 and out[0].shape == (1000,)
