"""``Fabric`` across 2 real processes (gloo): collectives, training with DDP, checkpoints and exact resume.

Each test starts two fresh processes with ``fabric_testing.run_processes`` (they look like torchrun workers), and
``Fabric`` creates the process group itself when ``launch()`` joins them.
"""

from __future__ import annotations

import contextlib
import functools
import io
import operator
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_core import Fabric
from fabric_strategies import DDPStrategy
from fabric_testing import RandomLabelledDataset, TinyMLP, run_processes
from fabric_utils import apply_to_collection


def portable(result: Any) -> Any:
    """Tensors as nested lists: results travel back from the worker processes by pickling."""
    return apply_to_collection(result, torch.Tensor, lambda t: t.tolist())


def make_fabric(**kwargs: Any) -> Fabric:
    strategy = DDPStrategy(timeout=timedelta(seconds=60))
    return Fabric(accelerator="cpu", devices=2, strategy=strategy, **kwargs)


class RecordingLogger:
    def __init__(self) -> None:
        self.metrics: list[Any] = []

    name = "recording"
    version = 0

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        self.metrics.append((dict(metrics), step))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None: ...

    def save(self) -> None: ...

    def finalize(self, status: str) -> None: ...


def _collectives(rank: int, world_size: int, shared: str) -> dict[str, Any]:
    logger = RecordingLogger()
    fabric = make_fabric(loggers=logger)
    fabric.launch()  # the processes exist already: this joins them
    assert (fabric.global_rank, fabric.local_rank, fabric.node_rank, fabric.world_size) == (rank, rank, 0, 2)
    assert fabric.is_global_zero == (rank == 0)
    assert torch.distributed.is_initialized()
    out: dict[str, Any] = {}
    out["broadcast"] = fabric.broadcast({"from": rank, "tensor": torch.tensor([rank])}, src=1)
    out["gathered"] = fabric.all_gather(torch.tensor([rank, 10 * rank]))
    out["gathered_collection"] = fabric.all_gather({"a": torch.tensor(rank), "b": [torch.full((2,), float(rank))]})
    out["ragged"] = fabric.all_gather(torch.arange(rank + 1))
    out["mean"] = fabric.all_reduce(torch.tensor(float(rank)))
    out["sum"] = fabric.all_reduce({"x": torch.tensor(float(rank + 1))}, reduce_op="sum")
    out["max_number"] = fabric.all_reduce(rank + 5, reduce_op="max")
    with pytest.raises(ValueError, match="'median'"):
        fabric.all_reduce(torch.tensor(1.0), reduce_op="median")
    if rank == 1:
        time.sleep(0.5)
    start = time.monotonic()
    fabric.barrier("after-sleep")
    out["waited"] = time.monotonic() - start
    marker = Path(shared) / "rank0-was-first"
    with fabric.rank_zero_first():
        if rank == 0:
            time.sleep(0.3)
            marker.write_text("0")
        else:
            out["saw_marker"] = marker.exists()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        fabric.print("hello from", rank)
    out["printed"] = printed.getvalue()
    fabric.log("loss", torch.tensor(float(rank)), step=3)
    out["logged"] = logger.metrics
    return portable(out)


def test_collectives_barrier_rank_zero_first_print_and_log(tmp_path: Path) -> None:
    first, second = run_processes(_collectives, str(tmp_path), init_process_group=False)
    for result in (first, second):
        assert result["broadcast"] == {"from": 1, "tensor": [1]}
        assert result["gathered"] == [[0, 0], [1, 10]]
        assert result["gathered_collection"] == {"a": [0, 1], "b": [[[0.0, 0.0], [1.0, 1.0]]]}
        assert result["ragged"] == [[0], [0, 1]]
        assert result["mean"] == 0.5
        assert result["sum"] == {"x": 3.0}
        assert result["max_number"] == 6
    assert first["waited"] >= 0.4  # rank 0 waited for rank 1 at the barrier
    assert second["saw_marker"]  # rank 1 entered the block after rank 0 left it
    assert first["printed"] == "hello from 0\n"
    assert second["printed"] == ""
    assert first["logged"] == [({"loss": 0.0}, 3)]
    assert second["logged"] == [({"loss": 1.0}, 3)]


def flat_parameters(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().float() for p in module.parameters()])


class Scorer(TinyMLP):
    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).sum(dim=1)


def _training(rank: int, world_size: int) -> dict[str, Any]:
    fabric = make_fabric(precision="bf16-mixed")
    fabric.launch()
    fabric.seed_everything(100 + rank)  # different initial weights per rank: setup must make them equal
    model = fabric.setup_module(TinyMLP())
    out: dict[str, Any] = {"initial": flat_parameters(model)}
    optimizer = fabric.setup_optimizers(torch.optim.SGD(model.parameters(), lr=0.1))
    indices = fabric.setup_dataloaders(DataLoader(TensorDataset(torch.arange(20)), batch_size=4, shuffle=True))
    out["indices"] = sorted(int(i) for (batch,) in indices for i in batch)
    loader = fabric.setup_dataloaders(DataLoader(RandomLabelledDataset(length=64, seed=3), batch_size=8))
    for x, y in loader:
        logits = model(x)
        assert logits.dtype == torch.float32
        loss = nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad()
        fabric.backward(loss)
        out["norm"] = fabric.clip_gradients(model, optimizer, max_norm=10.0)
        optimizer.step()
    out["trained"] = flat_parameters(model)
    x = torch.randn(4, 32) * (rank + 1)
    with fabric.no_backward_sync(model):
        fabric.backward(model(x).sum())
    out["unsynced_grad"] = model.module.layer1.weight.grad.clone()
    optimizer.zero_grad()
    fabric.backward(model(x).sum())
    out["synced_grad"] = model.module.layer1.weight.grad.clone()
    scorer = fabric.setup(Scorer())
    fabric.mark_forward_method(scorer, "score")
    fabric.backward(scorer.score(torch.randn(4, 32) * (rank + 1)).sum())  # through DDP: gradients are averaged
    out["marked_grad"] = scorer.module.layer1.weight.grad.clone()
    with fabric.init_module():
        created = nn.Linear(2, 2)
    out["init_device"] = str(created.weight.device)
    out["to_device"] = str(fabric.to_device(torch.ones(1)).device)
    return portable(out)


def test_five_step_training_with_ddp_keeps_the_replicas_identical() -> None:
    first, second = run_processes(_training, init_process_group=False)
    assert first["initial"] == second["initial"]
    assert sorted(first["indices"] + second["indices"]) == list(range(20))
    assert not set(first["indices"]) & set(second["indices"])
    assert first["initial"] != first["trained"]
    assert first["trained"] == second["trained"]
    assert first["norm"] == second["norm"]
    assert first["unsynced_grad"] != second["unsynced_grad"]
    assert first["synced_grad"] == second["synced_grad"]
    assert first["marked_grad"] == second["marked_grad"]
    assert first["init_device"] == first["to_device"] == "cpu"


class Agent(TinyMLP):
    """An RL-style model whose training step calls a method, not forward (as in Lightning's PPO examples)."""

    def get_action_and_value(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(x)
        return logits.argmax(dim=1), logits.sum(dim=1)


def _unmarked_method(rank: int, world_size: int) -> dict[str, Any]:
    fabric = make_fabric()
    fabric.launch()
    agent = fabric.setup(Agent())
    _, value = agent.get_action_and_value(torch.randn(4, 32) * (rank + 1))  # different data per rank, not marked
    fabric.backward(value.sum())
    out = {"synced": agent.module.layer1.weight.grad.clone()}
    agent.module.zero_grad()
    with fabric.no_backward_sync(agent):
        fabric.backward(agent.get_action_and_value(torch.randn(4, 32) * (rank + 1))[1].sum())
    out["local"] = agent.module.layer1.weight.grad.clone()
    return portable(out)


def test_an_unmarked_method_of_the_model_runs_through_ddp_and_syncs_gradients() -> None:
    first, second = run_processes(_unmarked_method, init_process_group=False)
    assert first["synced"] == second["synced"]  # DDP averaged them: the call went through its forward
    assert first["local"] != second["local"]  # the same call without synchronisation differs per rank


def run_epochs(
    fabric: Fabric,
    model: Any,
    optimizer: Any,
    loader: Any,
    epochs: int,
    stop: tuple[int, int] | None = None,
    path: str | None = None,
) -> list[list[int]]:
    seen: list[list[int]] = []
    for epoch in range(loader.state_dict()["epoch"], epochs):
        for index, (x, y, i) in enumerate(loader):
            seen.append(i.tolist())
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            fabric.backward(loss)
            optimizer.step()
            if stop == (epoch, index):
                assert path is not None
                fabric.save(path, {"model": model, "optimizer": optimizer, "loader": loader, "epoch": epoch})
                return seen
    return seen


def fresh_objects(fabric: Fabric) -> tuple[Any, Any, Any]:
    torch.manual_seed(0)
    model = TinyMLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model, optimizer = fabric.setup(model, optimizer)
    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(
        torch.randn(48, 32, generator=generator), torch.randint(0, 2, (48,), generator=generator), torch.arange(48)
    )
    loader = fabric.setup_dataloaders(DataLoader(data, batch_size=4, shuffle=True))
    return model, optimizer, loader


def _checkpoint_resume(rank: int, world_size: int, directory: str) -> dict[str, Any]:
    fabric = make_fabric()
    fabric.launch()
    path = os.path.join(directory, "checkpoint.pt")
    out: dict[str, Any] = {}

    model, optimizer, loader = fresh_objects(fabric)
    out["uninterrupted"] = run_epochs(fabric, model, optimizer, loader, epochs=2)
    out["final"] = flat_parameters(model)

    model, optimizer, loader = fresh_objects(fabric)
    out["before_stop"] = run_epochs(fabric, model, optimizer, loader, epochs=2, stop=(0, 2), path=path)
    out["file_after_save"] = os.path.isfile(path)

    model, optimizer, loader = fresh_objects(fabric)
    state = {"model": model, "optimizer": optimizer, "loader": loader}
    out["remainder"] = fabric.load(path, state)
    out["after_resume"] = run_epochs(fabric, model, optimizer, loader, epochs=2)
    out["resumed_final"] = flat_parameters(model)

    filtered = os.path.join(directory, "filtered.pt")
    fabric.save(filtered, {"model": model, "step": 1}, filter={"model": lambda name, _: name.endswith("bias")})
    out["filtered_keys"] = sorted(torch.load(filtered, weights_only=True)["model"])
    raw = os.path.join(directory, "raw.pt")
    if fabric.is_global_zero:
        torch.save(TinyMLP().state_dict(), raw)
    fabric.barrier()
    fabric.load_raw(raw, model)
    out["raw_loaded"] = torch.equal(model.module.layer2.bias, torch.load(raw, weights_only=True)["layer2.bias"])
    return portable(out)


def test_checkpoint_resume_mid_epoch_matches_an_uninterrupted_ddp_run(tmp_path: Path) -> None:
    results = run_processes(_checkpoint_resume, str(tmp_path), init_process_group=False)
    for out in results:
        assert out["file_after_save"]
        assert out["remainder"] == {"epoch": 0}
        assert out["before_stop"] + out["after_resume"] == out["uninterrupted"]
        assert out["final"] == out["resumed_final"]
        assert out["filtered_keys"] == ["layer1.bias", "layer2.bias"]
        assert out["raw_loaded"]
    first, second = results
    first_epoch = [set(functools.reduce(operator.iadd, out["uninterrupted"], [])[:24]) for out in results]
    assert not first_epoch[0] & first_epoch[1]
    assert first_epoch[0] | first_epoch[1] == set(range(48))
    assert first["final"] == second["final"]


def _under_slurm(rank: int, world_size: int) -> dict[str, Any]:
    """These two processes look like tasks that ``srun`` started (and no longer like torchrun workers)."""
    for name in ("RANK", "LOCAL_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE", "NODE_RANK"):
        os.environ.pop(name, None)
    os.environ.update(
        {
            "SLURM_NTASKS": "2",
            "SLURM_NTASKS_PER_NODE": "2",
            "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": str(rank),
            "SLURM_NODEID": "0",
            "SLURM_NNODES": "1",
            "SLURM_JOB_ID": "4242",
            "SLURM_JOB_NAME": "train",
            "SLURM_NODELIST": "127.0.0.1",
        }
    )
    fabric = make_fabric()
    ran: list[int] = []
    fabric.launch(lambda f, value: ran.append(value), 5)  # joins the tasks srun started, then calls the function
    total = fabric.all_reduce(torch.tensor(float(rank + 1)), reduce_op="sum")
    return {
        "environment": type(fabric.strategy.cluster_environment).__name__,
        "ranks": (fabric.global_rank, fabric.world_size),
        "ran": ran,
        "total": float(total),
    }


def test_launch_joins_processes_that_slurm_started() -> None:
    results = run_processes(_under_slurm, init_process_group=False)
    for rank, out in enumerate(results):
        assert out == {"environment": "SLURMEnvironment", "ranks": (rank, 2), "ran": [5], "total": 3.0}
