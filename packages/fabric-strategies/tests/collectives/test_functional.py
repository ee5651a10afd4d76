"""all_gather of tensors whose shapes differ across ranks, all_reduce semantics; real gloo processes."""

from __future__ import annotations

import pytest
import torch

from fabric_strategies import all_gather_tensor, all_reduce_tensor, gather_all_tensors
from fabric_testing import run_processes


def test_without_a_process_group_results_are_local():
    tensor = torch.tensor([1, 2])
    assert all_gather_tensor(tensor) is tensor
    reduced = all_reduce_tensor(tensor, reduce_op="mean")
    assert reduced.dtype == torch.float64  # as with several processes: int64 means are float64
    assert reduced is not tensor
    assert torch.equal(all_reduce_tensor(tensor, reduce_op="sum"), tensor)
    with pytest.raises(ValueError, match=r"'median'.*mean, avg, sum, min, max, product"):
        all_reduce_tensor(tensor, reduce_op="median")


def _uneven(rank: int, world_size: int) -> dict[str, object]:
    out: dict[str, object] = {}
    # same number of dims, different sizes: a list comes back, each tensor exactly as sent
    mine = torch.arange((rank + 1) * 3, dtype=torch.float32).reshape(rank + 1, 3)
    gathered = all_gather_tensor(mine)
    out["uneven"] = [t.tolist() for t in gathered]
    # equal shapes: stacked
    out["equal"] = all_gather_tensor(torch.full((2,), float(rank))).tolist()
    # scalars stack to (world_size,)
    out["scalar"] = all_gather_tensor(torch.tensor(rank)).tolist()
    # different numbers of dims
    odd = torch.ones(2) if rank == 0 else torch.ones(2, 2)
    out["ndims"] = [tuple(t.shape) for t in gather_all_tensors(odd)]
    # more dims than the shape header holds
    deep = torch.zeros([1] * 9 + [rank + 1])
    out["deep"] = [tuple(t.shape) for t in gather_all_tensors(deep)]
    # gradients flow back through an uneven gather with sync_grads=True
    leaf = torch.ones(rank + 1, requires_grad=True)
    parts = all_gather_tensor(leaf * 2, sync_grads=True)
    sum(p.sum() * (i + 1) for i, p in enumerate(parts)).backward()
    out["grad"] = leaf.grad.tolist()
    # all_reduce: mean of ints comes back as floats, the input stays unchanged
    value = torch.tensor([rank + 1])
    out["mean"] = all_reduce_tensor(value, reduce_op="mean").tolist()
    out["input_untouched"] = value.tolist() == [rank + 1]
    out["min"] = all_reduce_tensor(torch.tensor([rank + 1.0]), reduce_op="min").tolist()
    out["product"] = all_reduce_tensor(torch.tensor([rank + 2.0]), reduce_op="product").tolist()
    return out


def test_all_gather_with_shapes_that_differ_across_ranks_returns_each_ranks_tensor():
    for rank, out in enumerate(run_processes(_uneven)):
        assert out["uneven"] == [[[0.0, 1.0, 2.0]], [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]]
        assert out["equal"] == [[0.0, 0.0], [1.0, 1.0]]
        assert out["scalar"] == [0, 1]
        assert out["ndims"] == [(2,), (2, 2)]
        assert out["deep"] == [tuple([1] * 9 + [1]), tuple([1] * 9 + [2])]
        # d(sum_i (i+1) * sum(2 * leaf_i)) / d leaf_rank, summed over both ranks' graphs
        assert out["grad"] == [2.0 * (rank + 1) * 2] * (rank + 1)
        assert out["mean"] == [1.5]
        assert out["input_untouched"]
        assert out["min"] == [1.0]
        assert out["product"] == [6.0]
