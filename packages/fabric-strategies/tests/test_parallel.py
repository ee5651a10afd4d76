"""ParallelStrategy: completion of parts, ranks, and its collectives and checkpoints between two real processes."""

from __future__ import annotations

import pytest
import torch

from fabric_environments import LightningEnvironment
from fabric_io import TorchCheckpointIO
from fabric_precision import Precision
from fabric_strategies import (
    DEFAULT_TIMEOUT,
    DDPStrategy,
    MultiprocessingLauncher,
    ParallelStrategy,
    SubprocessScriptLauncher,
)
from fabric_testing import run_processes

CPU2 = [torch.device("cpu")] * 2


def test_complete_fills_only_missing_parts(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    given_env = LightningEnvironment()
    strategy = ParallelStrategy(cluster_environment=given_env)
    assert strategy.parallel_devices == [torch.device("cpu")]
    assert strategy.num_nodes == 1
    other_env = LightningEnvironment()
    io = TorchCheckpointIO()
    strategy.complete(cluster_environment=other_env, parallel_devices=CPU2 * 2, num_nodes=2, checkpoint_io=io)
    assert strategy.cluster_environment is given_env
    assert strategy.checkpoint_io is io
    assert strategy.num_processes == 4
    assert strategy.num_nodes == 2
    # ranks are told to the (local) environment: node 0, local rank 0 of 4 processes per node
    assert (strategy.world_size, strategy.global_rank, strategy.local_rank, strategy.node_rank) == (8, 0, 0, 0)
    strategy.complete(parallel_devices=CPU2, num_nodes=3)
    assert strategy.num_processes == 4
    assert strategy.num_nodes == 2


def test_invalid_parts_are_rejected():
    with pytest.raises(TypeError, match=r"list of devices"):
        ParallelStrategy(parallel_devices="cpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"at least one device"):
        ParallelStrategy(parallel_devices=[])
    with pytest.raises(TypeError, match=r"ClusterEnvironment"):
        ParallelStrategy(cluster_environment="slurm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"num_nodes.*0"):
        ParallelStrategy().complete(num_nodes=0)


def test_without_a_start_method_it_starts_nothing_and_creates_no_process_group(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    strategy = ParallelStrategy(parallel_devices=CPU2)
    assert strategy.start_method is None
    assert strategy.launcher is None
    assert not strategy._setup_process_group()
    assert (strategy.process_group_backend, strategy.timeout) == ("gloo", DEFAULT_TIMEOUT)


def test_the_start_method_chooses_the_launcher(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    popen = ParallelStrategy(parallel_devices=CPU2, start_method="popen", cluster_environment=LightningEnvironment())
    assert isinstance(popen.launcher, SubprocessScriptLauncher)
    assert isinstance(ParallelStrategy(parallel_devices=CPU2, start_method="fork").launcher, MultiprocessingLauncher)
    monkeypatch.setenv("LOCAL_RANK", "0")  # processes started by an external launcher
    assert ParallelStrategy(parallel_devices=CPU2, start_method="spawn").launcher is None


def test_process_group_options_are_checked():
    with pytest.raises(ValueError, match=r"'thread'.*popen, spawn, fork, forkserver"):
        ParallelStrategy(start_method="thread")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"None.*popen, spawn, fork, forkserver"):
        DDPStrategy(start_method=None)  # type: ignore[arg-type]  # DDP always starts its processes
    with pytest.raises(TypeError, match=r"timedelta"):
        ParallelStrategy(timeout=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"'glooo'"):
        ParallelStrategy(process_group_backend="glooo")
    assert ParallelStrategy(process_group_backend="NCCL").process_group_backend == "nccl"


def test_collectives_act_locally_before_the_process_group_exists():
    strategy = ParallelStrategy(parallel_devices=CPU2)
    assert torch.equal(strategy.all_reduce(torch.tensor(2.0), reduce_op="sum"), torch.tensor(2.0))
    assert strategy.all_reduce(3).item() == 3
    with pytest.raises(ValueError, match=r"'median'"):
        strategy.all_reduce(torch.tensor(1.0), reduce_op="median")
    with pytest.raises(ValueError, match=r"src=5"):
        strategy.broadcast("x", src=5)
    strategy.barrier()
    assert strategy.reduce_boolean_decision(True)


def _collectives_and_checkpoint(rank: int, world_size: int, path: str) -> dict[str, object]:
    strategy = ParallelStrategy(parallel_devices=CPU2)
    strategy.complete(precision=Precision())
    strategy.setup_environment()
    out: dict[str, object] = {}
    out["mean"] = strategy.all_reduce(torch.tensor([float(rank)])).tolist()
    out["sum"] = strategy.all_reduce(torch.tensor([rank + 1]), reduce_op="sum").tolist()
    out["max"] = strategy.all_reduce(torch.tensor([rank + 1.0]), reduce_op="max").tolist()
    out["gather"] = strategy.all_gather(torch.tensor([rank, rank])).tolist()
    uneven = strategy.all_gather(torch.ones(rank + 1))
    out["uneven"] = [t.tolist() for t in uneven]
    out["broadcast"] = strategy.broadcast({"rank": rank}, src=1)
    out["all_agree"] = strategy.reduce_boolean_decision(rank == 0, all=True)
    out["any"] = strategy.reduce_boolean_decision(rank == 0, all=False)
    out["both"] = strategy.reduce_boolean_decision(True, all=True)
    strategy.barrier("named")

    # rank 0 writes, every rank reads the same file right after the save
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(rank + 1.0)
    strategy.save_checkpoint(path, {"model": model, "rank_seen": rank})
    fresh = torch.nn.Linear(2, 2)
    remainder = strategy.load_checkpoint(path, {"model": fresh})
    out["loaded_weight"] = fresh.weight[0, 0].item()
    out["remainder"] = remainder
    strategy.teardown()
    return out


def test_collectives_and_checkpoints_between_two_processes(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    for rank, out in enumerate(run_processes(_collectives_and_checkpoint, path)):
        assert out["mean"] == [0.5]
        assert out["sum"] == [3]
        assert out["max"] == [2.0]
        assert out["gather"] == [[0, 0], [1, 1]]
        assert out["uneven"] == [[1.0], [1.0, 1.0]]
        assert out["broadcast"] == {"rank": 1}
        assert out["all_agree"] is False
        assert out["any"] is True
        assert out["both"] is True
        assert out["loaded_weight"] == 1.0  # what rank 0 saved
        assert out["remainder"] == {"rank_seen": 0}, rank
