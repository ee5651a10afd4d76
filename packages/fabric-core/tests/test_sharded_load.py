"""``fabric.load`` of a sharded checkpoint under any strategy and world size (issue #15), from the user's side.

Real processes over gloo write an FSDP checkpoint at world 2 (and a full file of its weights) and a
ModelParallel one at world 2; a single device here, DDP at world 2 and FSDP at world 3 load them.
"""

from __future__ import annotations

import copy
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fabric_core import Fabric
from fabric_io import UnsafeCheckpointError
from fabric_strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy
from fabric_testing import PicklePayload, TinyMLP, run_processes

TIMEOUT = timedelta(seconds=60)


def _model_and_optimizer(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = TinyMLP(4, 8, 2)
    return model, torch.optim.Adam(model.parameters(), lr=0.01)


def _train_step(fabric: Fabric, model: Any, optimizer: Any, rank: int) -> None:
    fabric.backward(model(torch.randn(4, 4) * (rank + 1)).square().mean())
    optimizer.step()
    optimizer.zero_grad()


def _parallelize(module: nn.Module, device_mesh: Any) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    fully_shard(module, mesh=device_mesh["data_parallel"])
    return module


def _gathered(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The full model and optimizer state through torch's own API (collective; full on rank 0)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {
        "model": get_model_state_dict(model, options=options),
        "optimizer": get_optimizer_state_dict(model, optimizer, options=options),
    }


def _save(rank: int, world_size: int, directory: str, kind: str) -> None:
    if kind == "fsdp":
        strategy: Any = FSDPStrategy(timeout=TIMEOUT)
    else:
        strategy = ModelParallelStrategy(_parallelize, data_parallel_size=2, tensor_parallel_size=1, timeout=TIMEOUT)
    fabric = Fabric(accelerator="cpu", devices=world_size, strategy=strategy)
    fabric.launch()
    model, optimizer = fabric.setup(*_model_and_optimizer(seed=0))
    _train_step(fabric, model, optimizer, rank)
    fabric.save(os.path.join(directory, kind), {"model": model, "optimizer": optimizer, "step": 5})
    reference = _gathered(model.module, optimizer.optimizer)
    if rank == 0:
        torch.save(reference, os.path.join(directory, f"reference-{kind}.pt"))
    if rank == 0 and kind == "fsdp":
        torch.save({"model": reference["model"], "step": 5}, os.path.join(directory, "full.pt"))  # a plain full file


def _load_at_world_3(rank: int, world_size: int, directory: str) -> dict[str, Any]:
    fabric = Fabric(accelerator="cpu", devices=world_size, strategy=FSDPStrategy(timeout=TIMEOUT))
    fabric.launch()
    results: dict[str, Any] = {}
    for source in ("fsdp", "model_parallel", "full.pt", "single.pt"):
        model, optimizer = fabric.setup(*_model_and_optimizer(seed=1))
        state: dict[str, Any] = {"model": model, "step": 0}
        if source != "full.pt":
            state["optimizer"] = optimizer
        fabric.load(os.path.join(directory, source), state)
        # copies: on the CPU the gathered tensors can be the live ones, which the next step changes
        results[source] = copy.deepcopy({"step": state["step"], **_gathered(model.module, optimizer.optimizer)})
        _train_step(fabric, model, optimizer, rank)  # the loaded state is usable
    return results if rank == 0 else {}


def _load_with_ddp(rank: int, world_size: int, directory: str) -> dict[str, Any]:
    fabric = Fabric(accelerator="cpu", devices=world_size, strategy=DDPStrategy(timeout=TIMEOUT))
    fabric.launch()
    model, optimizer = fabric.setup(*_model_and_optimizer(seed=1 + rank))  # DDP makes the replicas equal first
    state = {"model": model, "optimizer": optimizer, "step": 0}
    fabric.load(os.path.join(directory, "fsdp"), state)
    names = [name for name, _ in model.named_parameters()]
    by_name = {names[index]: value for index, value in optimizer.state_dict()["state"].items()}
    result = copy.deepcopy({"step": state["step"], "model": model.state_dict(), "optimizer": by_name})
    _train_step(fabric, model, optimizer, rank)
    return result


def _full(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("sharded")
    for kind in ("fsdp", "model_parallel"):
        run_processes(_save, str(directory), kind, world_size=2, init_process_group=False)
    # what a single-device run saves: a full file whose optimizer state is numbered, not keyed by name
    fabric = Fabric(accelerator="cpu", devices=1)
    model, optimizer = fabric.setup(*_model_and_optimizer(seed=1))
    state = {"model": model, "optimizer": optimizer, "step": 0}
    fabric.load(directory / "fsdp", state)
    fabric.save(directory / "single.pt", state)
    return directory


def _assert_same_optimizer_state(loaded: dict[str, Any], reference: dict[str, Any]) -> None:
    """``loaded`` maps parameter names to their state; ``reference`` is a name-keyed optimizer state dict."""
    assert set(loaded) == set(reference["state"])
    for name, expected in reference["state"].items():
        for field in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(loaded[name][field], expected[field], atol=0, rtol=0)


def test_a_single_device_loads_an_fsdp_checkpoint_written_by_two_processes(saved: Path) -> None:
    reference = _full(saved / "reference-fsdp.pt")
    fabric = Fabric(accelerator="cpu", devices=1)
    model, optimizer = fabric.setup(*_model_and_optimizer(seed=1))
    state = {"model": model, "optimizer": optimizer, "step": 0}
    assert fabric.load(saved / "fsdp", state) == {}
    assert state["step"] == 5
    torch.testing.assert_close(model.state_dict(), reference["model"], atol=0, rtol=0)
    names = [name for name, _ in model.named_parameters()]
    by_name = {names[index]: value for index, value in optimizer.state_dict()["state"].items()}
    _assert_same_optimizer_state(by_name, reference["optimizer"])
    optimizer.step()  # the restored state drives the next step
    # the checkpoint without a state, and a model alone
    everything = fabric.load(saved / "fsdp")
    assert set(everything) == {"model", "optimizer", "step"}
    bare = TinyMLP(4, 8, 2)
    fabric.load(saved / "model_parallel", {"model": bare}, strict=False)
    torch.testing.assert_close(bare.state_dict(), _full(saved / "reference-model_parallel.pt")["model"], atol=0, rtol=0)
    with pytest.raises(TypeError, match="load the optimizer together with its module"):
        fabric.load_raw(saved / "fsdp", optimizer)


def test_fsdp_at_world_3_loads_fsdp_and_model_parallel_checkpoints_of_world_2_and_full_files(saved: Path) -> None:
    results = run_processes(_load_at_world_3, str(saved), world_size=3, init_process_group=False)[0]
    sources = {"fsdp": "fsdp", "model_parallel": "model_parallel", "full.pt": "fsdp", "single.pt": "fsdp"}
    for source, written_by in sources.items():
        reference = _full(saved / f"reference-{written_by}.pt")
        loaded = results[source]
        assert loaded["step"] == 5
        torch.testing.assert_close(loaded["model"], reference["model"], atol=0, rtol=0)
        if source != "full.pt":  # the full file holds the model only
            _assert_same_optimizer_state(loaded["optimizer"]["state"], reference["optimizer"])


def test_a_single_device_load_of_a_sharded_directory_stays_restricted(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    FSDPStrategy().save_checkpoint(tmp_path / "ckpt", {"model": TinyMLP(4, 8, 2), "extra": PicklePayload(marker)})
    fabric = Fabric(accelerator="cpu", devices=1)
    model = fabric.setup(TinyMLP(4, 8, 2))
    with pytest.raises(UnsafeCheckpointError):
        fabric.load(tmp_path / "ckpt", {"model": model})
    assert not marker.exists()
    fabric.load(tmp_path / "ckpt", {"model": model}, weights_only=False)  # trusted: the payload runs
    assert marker.exists()


def test_ddp_processes_each_load_an_fsdp_checkpoint_whole(saved: Path) -> None:
    reference = _full(saved / "reference-fsdp.pt")
    for result in run_processes(_load_with_ddp, str(saved), world_size=2, init_process_group=False):
        assert result["step"] == 5
        torch.testing.assert_close(result["model"], reference["model"], atol=0, rtol=0)
        _assert_same_optimizer_state(result["optimizer"], reference["optimizer"])
