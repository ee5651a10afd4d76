"""Tensors returned by a rank arrive intact after the rank process has exited."""

import torch

from fabric_testing import run_processes


def make_tensor(rank: int, world_size: int) -> torch.Tensor:
    return torch.full((1000,), float(rank))


def test_returned_tensors_survive_the_rank_process() -> None:
    out = run_processes(make_tensor)
    assert out[0].shape == (1000,)
    assert torch.equal(out[1], torch.full((1000,), 1.0))
