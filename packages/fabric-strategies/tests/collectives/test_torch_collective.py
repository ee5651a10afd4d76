"""TorchCollective: every primitive for real between two gloo processes."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from fabric_strategies import TorchCollective
from fabric_strategies.collectives.torch_collective import tcp_init_method, to_native_op
from fabric_testing import run_processes


def test_op_names_map_to_reduce_ops_and_unknown_names_list_the_choices():
    assert to_native_op("SUM") == dist.ReduceOp.SUM
    assert to_native_op("mean") == dist.ReduceOp.AVG
    assert to_native_op(dist.ReduceOp.MAX) == dist.ReduceOp.MAX
    with pytest.raises(ValueError, match=r"'median'.*sum, mean, avg, product, min, max"):
        to_native_op("median")


def test_tcp_init_method_brackets_ipv6_addresses():
    assert tcp_init_method("10.0.0.1", 1234) == "tcp://10.0.0.1:1234"
    assert tcp_init_method("::1", 1234) == "tcp://[::1]:1234"


def test_uninitialised_collective_reports_itself_and_refuses_subgroups():
    collective = TorchCollective()
    assert TorchCollective.is_available()
    assert not TorchCollective.is_initialized()
    assert "uninitialized" in repr(collective)
    with pytest.raises(RuntimeError, match=r"default process group first"):
        collective.create_group()


def _every_primitive(rank: int, world_size: int) -> dict[str, object]:
    collective = TorchCollective().setup(
        main_address=os.environ["MASTER_ADDR"],
        main_port=int(os.environ["MASTER_PORT"]),
        rank=rank,
        world_size=world_size,
        backend="gloo",
        timeout=timedelta(seconds=30),
    )
    other = 1 - rank
    out: dict[str, object] = {"rank": collective.rank, "world_size": collective.world_size}
    out["broadcast"] = collective.broadcast(torch.tensor([float(rank + 5)]), src=1).tolist()
    out["all_reduce_sum"] = collective.all_reduce(torch.tensor([rank + 1.0]), op="sum").tolist()
    out["all_reduce_max"] = collective.all_reduce(torch.tensor([rank + 1.0]), op=dist.ReduceOp.MAX).tolist()
    out["all_reduce_mean"] = collective.all_reduce(torch.tensor([rank + 1.0]), op="mean").tolist()
    out["reduce"] = collective.reduce(torch.tensor([rank + 1.0]), dst=0, op="product").tolist()
    out["all_gather"] = [
        t.tolist() for t in collective.all_gather([torch.zeros(2), torch.zeros(2)], torch.full((2,), float(rank)))
    ]
    gather_list = [torch.zeros(1), torch.zeros(1)] if rank == 0 else None
    gathered = collective.gather(torch.tensor([rank * 10.0]), gather_list, dst=0)
    out["gather"] = None if gathered is None else [t.tolist() for t in gathered]
    scatter_list = [torch.tensor([7.0]), torch.tensor([8.0])] if rank == 0 else None
    out["scatter"] = collective.scatter(torch.zeros(1), scatter_list, src=0).tolist()
    inputs = [torch.tensor([rank + 1.0]), torch.tensor([10.0 * (rank + 1)])]
    out["reduce_scatter"] = collective.reduce_scatter(torch.zeros(1), inputs, op="sum").tolist()
    sent = [torch.tensor([rank * 100.0 + dst]) for dst in range(world_size)]
    out["all_to_all"] = [t.tolist() for t in collective.all_to_all([torch.zeros(1), torch.zeros(1)], sent)]
    if rank == 0:
        collective.send(torch.tensor([42.0]), dst=other)
        out["recv"] = collective.recv(torch.zeros(1), src=other).tolist()
    else:
        out["recv"] = collective.recv(torch.zeros(1), src=other).tolist()
        collective.send(torch.tensor([43.0]), dst=other)
    collective.barrier()
    out["objects"] = collective.all_gather_object({"rank": rank})
    out["broadcast_object"] = collective.broadcast_object(f"from {rank}", src=0)

    # a subgroup of rank 1 only: the collective communicates in it, then destroys it
    sub = TorchCollective().create_group(ranks=[1])
    if rank == 1:
        out["subgroup"] = (sub.world_size, sub.all_reduce(torch.tensor([3.0]), op="sum").tolist())
    sub.teardown()
    collective.teardown()
    out["destroyed"] = not dist.is_initialized()
    return out


def test_every_primitive_between_two_processes():
    rank0, rank1 = run_processes(_every_primitive, init_process_group=False)
    for rank, out in enumerate((rank0, rank1)):
        assert out["rank"] == rank
        assert out["world_size"] == 2
        assert out["broadcast"] == [6.0]
        assert out["all_reduce_sum"] == [3.0]
        assert out["all_reduce_max"] == [2.0]
        assert out["all_reduce_mean"] == [1.5]
        assert out["all_gather"] == [[0.0, 0.0], [1.0, 1.0]]
        assert out["all_to_all"] == [[float(rank)], [100.0 + rank]]
        assert out["objects"] == [{"rank": 0}, {"rank": 1}]
        assert out["broadcast_object"] == "from 0"
        assert out["destroyed"]
    assert rank0["reduce"] == [2.0]  # 1 * 2 on the destination
    assert rank0["gather"] == [[0.0], [10.0]]
    assert rank1["gather"] is None
    assert (rank0["scatter"], rank1["scatter"]) == ([7.0], [8.0])
    assert (rank0["reduce_scatter"], rank1["reduce_scatter"]) == ([3.0], [30.0])
    assert (rank0["recv"], rank1["recv"]) == ([43.0], [42.0])
    assert rank1["subgroup"] == (1, [3.0])
    assert "subgroup" not in rank0


def _object_primitives(rank: int, world_size: int) -> dict[str, object]:
    collective = TorchCollective().setup(backend="gloo", timeout=timedelta(seconds=30))  # env:// rendezvous
    out: dict[str, object] = {}
    out["broadcast_object_list"] = collective.broadcast_object_list([f"a{rank}", {"b": rank}], src=1)
    slots = [None] * world_size if rank == 2 else None
    out["gather_object"] = collective.gather_object({"rank": rank}, slots, dst=2)
    received: list[object] = [None]
    chunks = [{"chunk": r} for r in range(world_size)] if rank == 0 else None
    out["scatter_object_list"] = collective.scatter_object_list(received, chunks, src=0)
    collective.monitored_barrier(timeout=timedelta(seconds=20), wait_all_ranks=True)
    collective.teardown()
    return out


def test_object_collectives_between_three_processes():
    results = run_processes(_object_primitives, world_size=3, init_process_group=False)
    for rank, out in enumerate(results):
        assert out["broadcast_object_list"] == ["a1", {"b": 1}]
        assert out["scatter_object_list"] == [{"chunk": rank}]
        assert out["gather_object"] == ([{"rank": 0}, {"rank": 1}, {"rank": 2}] if rank == 2 else None)
