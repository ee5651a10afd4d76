"""Asynchronous saves (``save_state(..., asynchronous=True)``) on two real gloo processes: FSDP's sharded directory
and full file, ModelParallel's sharded directory of tensor-parallel DTensors on a 2-D mesh, and DDP's single file
written by rank 0, against synchronous saves of the same state."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fabric_io import CpuStaging, SharedStaging, is_sharded_checkpoint
from fabric_strategies import (
    DDPStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    Strategy,
    read_sharded_checkpoint,
    save_state,
    wait_for_saves,
)
from fabric_testing import child_pids, run_processes

TIMEOUT = timedelta(seconds=30)


def _model_and_optimizer(strategy: Any, width: int = 16) -> tuple[Any, Any]:
    torch.manual_seed(0)
    model = strategy.setup_module(nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 3)))
    optimizer = strategy.setup_optimizer(torch.optim.Adam(model.parameters(), lr=0.1))
    _step(strategy, model, optimizer)
    return model, optimizer


def _step(strategy: Any, model: Any, optimizer: Any) -> None:
    width = next(model.parameters()).shape[-1]
    strategy.backward(model(torch.randn(4, width)).square().mean(), model)
    optimizer.step()
    optimizer.zero_grad()


def _identical(saved: Any, expected: Any) -> bool:
    """Same structure, types and values; tensors bit for bit with the same dtype and shape."""
    if type(saved) is not type(expected):
        return False
    if isinstance(expected, torch.Tensor):
        same_kind = saved.dtype == expected.dtype and saved.shape == expected.shape
        return same_kind and torch.equal(saved.reshape(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8))
    if isinstance(expected, dict):
        return list(saved) == list(expected) and all(_identical(saved[k], expected[k]) for k in expected)
    if isinstance(expected, (list, tuple)):
        return len(saved) == len(expected) and all(_identical(a, b) for a, b in zip(saved, expected))
    return bool(saved == expected)


def _slowly(copy: Any) -> Any:
    def slow_copy(self: Any, obj: Any) -> Any:
        time.sleep(0.3)
        return copy(self, obj)

    return slow_copy


def _tensor_parallel(module: nn.Module, device_mesh: Any) -> nn.Module:
    """ModelParallelStrategy's parallelize_fn for ``_model_and_optimizer``'s model: the first linear layer split by
    columns and the second by rows over the tensor-parallel dimension, then fully_shard over the data-parallel one."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    parallelize_module(module, device_mesh["tensor_parallel"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
    fully_shard(module, mesh=device_mesh["data_parallel"])
    return module


def _async_equals_sync(rank: int, world_size: int, directory: str, kind: str, change: str = "step") -> bool:
    devices = [torch.device("cpu")] * world_size
    if kind == "ddp":
        strategy: Strategy = DDPStrategy(parallel_devices=devices, timeout=TIMEOUT)
    elif kind == "model-parallel":  # a 2-D mesh: data parallel 1 x tensor parallel 2
        strategy = ModelParallelStrategy(
            _tensor_parallel, data_parallel_size=1, tensor_parallel_size=2, parallel_devices=devices, timeout=TIMEOUT
        )
    else:
        state_dict_type = "full" if kind == "fsdp-full" else "sharded"
        strategy = FSDPStrategy(parallel_devices=devices, timeout=TIMEOUT, state_dict_type=state_dict_type)
    strategy.setup_environment()
    model, optimizer = _model_and_optimizer(strategy)
    state = {"model": model, "optimizer": optimizer, "step": 1, "notes": {"losses": [0.5]}}
    synchronous, asynchronous = os.path.join(directory, "sync"), os.path.join(directory, "async")
    save_state(strategy, synchronous, state)
    copies = {staging: staging.copy for staging in (CpuStaging, SharedStaging)}
    if change == "in place":  # the worker copies the shards slowly: changing them in place must wait for it
        for staging, copy in copies.items():
            staging.copy = _slowly(copy)  # type: ignore[method-assign]
    handle = save_state(strategy, asynchronous, state, asynchronous=True)
    assert handle is not None
    if change == "in place":
        with torch.no_grad():
            for parameter in model.parameters():  # DTensors: the guard sees the writes to their local shards
                parameter.mul_(0)
        assert handle.waited > 0.1
        for staging, copy in copies.items():
            staging.copy = copy  # type: ignore[method-assign]
    else:
        _step(strategy, model, optimizer)  # right after the call returned: the weights change in place
    state["notes"]["losses"].append(0.25)
    # a second asynchronous save starts only once the first is complete everywhere
    second = save_state(strategy, os.path.join(directory, "second"), state, asynchronous=True)
    assert handle.done()
    assert os.path.exists(asynchronous)
    assert second is not None
    second.wait()
    if kind in ("fsdp-sharded", "model-parallel") or rank == 0:  # the processes that write
        assert _writer_runs(), "the write did not go to a checkpoint writer process"
    if kind in ("fsdp-sharded", "model-parallel"):
        assert is_sharded_checkpoint(asynchronous)
        saved, expected = read_sharded_checkpoint(asynchronous), read_sharded_checkpoint(synchronous)
        assert sorted(os.listdir(directory)) == ["async", "second", "sync"], "no staging directory is left"
    else:
        saved, expected = torch.load(asynchronous, weights_only=True), torch.load(synchronous, weights_only=True)
    later = _weights(strategy, model)
    assert sorted(later) == sorted(saved["model"])
    changed = any(not torch.equal(saved["model"][name], later[name]) for name in later)
    return _identical(saved, expected) and changed


def _writer_runs() -> bool:
    """Whether this process has started a checkpoint writer process (fabric_io.writer)."""
    for pid in child_pids(helpers=True):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            if b"fabric_io.writer" in cmdline.read():
                return True
    return False


def _weights(strategy: Any, model: Any) -> dict[str, torch.Tensor]:
    """A copy of the model's full weights now (collective for FSDP and ModelParallel)."""
    if isinstance(strategy, (FSDPStrategy, ModelParallelStrategy)):
        return {k: v.full_tensor() for k, v in model.state_dict().items()}
    return {k: v.clone() for k, v in strategy.get_module_state_dict(model).items()}


@pytest.mark.parametrize("kind", ["fsdp-sharded", "fsdp-full", "model-parallel", "ddp"])
def test_an_asynchronous_save_equals_the_synchronous_one_and_ignores_later_training(tmp_path: Path, kind: str) -> None:
    results = run_processes(_async_equals_sync, str(tmp_path), kind, world_size=2)
    assert results == [True, True]


def test_an_in_place_change_of_the_shards_waits_for_their_copy(tmp_path: Path) -> None:
    results = run_processes(_async_equals_sync, str(tmp_path), "fsdp-sharded", "in place", world_size=2)
    assert results == [True, True]


def _failure_surfaces_everywhere(rank: int, world_size: int, directory: str, kind: str) -> str:
    devices = [torch.device("cpu")] * world_size
    if kind == "ddp":
        strategy: Strategy = DDPStrategy(parallel_devices=devices, timeout=TIMEOUT)
    else:
        strategy = FSDPStrategy(parallel_devices=devices, timeout=TIMEOUT)
    strategy.setup_environment()
    model, _ = _model_and_optimizer(strategy, width=64)
    path = os.path.join(directory, "last")
    save_state(strategy, path, {"model": model, "step": 1})  # small: fits the 2 MiB disk
    before = _weights(strategy, model)
    big = torch.ones(300_000)  # 1.2 MB on each process (and twice that for DDP's rank 0 with the file it replaces)
    handle = save_state(strategy, path, {"model": model, "big": big, "more": big.clone(), "step": 2}, asynchronous=True)
    assert handle is not None
    try:
        wait_for_saves(strategy)
    except OSError as err:
        outcome = f"OSError errno={err.errno}"
    except RuntimeError as err:
        outcome = f"RuntimeError: {err}"
    else:
        outcome = "no error"
    wait_for_saves(strategy)  # raised once
    previous = torch.load(path, weights_only=True) if kind == "ddp" else read_sharded_checkpoint(path)
    assert previous["step"] == 1
    assert all(torch.equal(previous["model"][name], weight) for name, weight in before.items())
    return outcome


@pytest.mark.parametrize("kind", ["fsdp-sharded", "ddp"])
def test_a_failed_save_raises_on_every_process_and_keeps_the_previous_checkpoint(small_disk: Path, kind: str) -> None:
    outcomes = run_processes(_failure_surfaces_everywhere, str(small_disk), kind, world_size=2)
    if kind == "ddp":  # rank 0 writes the file and gets the disk's error; rank 1 learns that it failed
        assert outcomes[0] == f"OSError errno={errno.ENOSPC}"
        assert outcomes[1].startswith("RuntimeError: The asynchronous save of"), outcomes
    else:  # DCP raises on every process; a shard cut short by the full disk may read as torch's own write error
        for outcome in outcomes:
            disk_full = outcome == f"OSError errno={errno.ENOSPC}"
            assert disk_full or outcome.startswith("RuntimeError: Saving the sharded checkpoint"), outcomes
    assert os.listdir(small_disk) == ["last"], "no staging file or directory is left"


class OwnWayStrategy(DDPStrategy):
    """A strategy that writes checkpoints its own way (as DeepSpeed and XLA do)."""

    def save_checkpoint(self, path: Any, state: Any, storage_options: Any = None, filter: Any = None) -> None:
        torch.save({"own": True}, path)


def test_a_strategy_that_saves_its_own_way_refuses_asynchronous_saves(tmp_path: Path) -> None:
    strategy = OwnWayStrategy(parallel_devices=[torch.device("cpu")])
    with pytest.raises(ValueError, match=r"OwnWayStrategy does not support asynchronous saves.*FSDP"):
        save_state(strategy, tmp_path / "x.pt", {"step": 1}, asynchronous=True)
    assert not (tmp_path / "x.pt").exists()
