"""DeepSpeedStrategy for real: two CPU processes over gloo, ZeRO stages 1-3 in fp32 and bf16, optimizer offload,
ZeRO-3 ``init_module`` and full-weight loading, and bit-exact resume from a DeepSpeed checkpoint.

DeepSpeed's compiled ops are never needed: the optimizers are torch's (``force_ds_cpu_optimizer=False`` lets
ZeRO-Offload step a torch optimizer on the offloaded states).
"""

from __future__ import annotations

import importlib
import io
import os
from datetime import timedelta
from typing import Any

import pytest
import torch

from fabric_environments import LightningEnvironment
from fabric_precision import DeepSpeedPrecision
from fabric_strategies import DeepSpeedStrategy
from fabric_testing import RunIf, TinyMLP, run_processes

TIMEOUT = timedelta(seconds=60)
RUN_TIMEOUT = 600.0  # a loaded 2-core machine needs minutes to start two processes that import DeepSpeed
FEATURES, OUTPUTS = 8, 4


def _pack(obj: Any) -> bytes:
    """Results cross the process boundary as bytes: tensors pickled by multiprocessing live in shared memory that
    disappears with the process that made them."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _unpack(payload: bytes) -> Any:
    return torch.load(io.BytesIO(payload), weights_only=True)


def _strategy(world_size: int, precision: str = "32-true", **options: Any) -> DeepSpeedStrategy:
    strategy = DeepSpeedStrategy(
        parallel_devices=[torch.device("cpu")] * world_size,
        cluster_environment=LightningEnvironment(),
        precision=DeepSpeedPrecision(precision),  # type: ignore[arg-type]
        timeout=TIMEOUT,
        **options,
    )
    strategy.setup_environment()
    return strategy


def _batch(step: int, rank: int | None, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of ``step`` (8 samples), or the slice of it that ``rank`` trains on."""
    generator = torch.Generator().manual_seed(1000 + step)
    x, y = torch.randn(8, FEATURES, generator=generator), torch.randn(8, OUTPUTS, generator=generator)
    if rank is None:
        return x, y
    size = 8 // world_size
    return x[rank * size : (rank + 1) * size], y[rank * size : (rank + 1) * size]


def _train(
    strategy: DeepSpeedStrategy, engine: Any, optimizer: Any, steps: range, rank: int, world: int
) -> list[float]:
    losses = []
    for step in steps:
        x, y = _batch(step, rank, world)
        output = engine(strategy.precision.convert_input(x))
        loss = torch.nn.functional.mse_loss(output.float(), y)
        strategy.backward(loss, engine)
        strategy.optimizer_step(optimizer)
        losses.append(loss.item())
    return losses


def _reference(initial: dict[str, torch.Tensor], steps: range) -> dict[str, torch.Tensor]:
    """The same training in plain PyTorch, on the whole batch in one process (what data parallelism must match)."""
    model = TinyMLP(FEATURES, 16, OUTPUTS)
    model.load_state_dict(initial)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    for step in steps:
        x, y = _batch(step, None, 1)
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _full_state(strategy: DeepSpeedStrategy, module: Any) -> dict[str, torch.Tensor]:
    return {name: value.float() for name, value in strategy.get_module_state_dict(module).items()}


def _train_stage(rank: int, world_size: int, stage: int, precision: str) -> dict[str, Any]:
    strategy = _strategy(world_size, precision, stage=stage)
    torch.manual_seed(0)
    with strategy.module_init_context():
        model = TinyMLP(FEATURES, 16, OUTPUTS)
    initial = _full_state(strategy, model)
    local_numel = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model = strategy.precision.convert_module(model)
    strategy.module_to_device(model)
    engine, [ds_optimizer] = strategy.setup_module_and_optimizers(model, [optimizer])
    losses = _train(strategy, engine, ds_optimizer, range(6), rank, world_size)
    result = {
        "losses": losses,
        "final": _full_state(strategy, engine),
        "initial": initial,
        "reference": _reference(initial, range(6)),
        "local_numel": local_numel,
        "full_numel": sum(t.numel() for t in initial.values()),
        "dtype": str(next(engine.module.parameters()).dtype),
        "shm_op": importlib.import_module("deepspeed.comm.comm").cdb.shm_comm_op,
    }
    strategy.teardown()
    return result


def _check_training(results: list[dict[str, Any]], precision: str, stage: int) -> None:
    first, second = results
    for name, value in first["final"].items():
        assert torch.equal(value, second["final"][name]), f"ranks disagree on {name}"
    changed = [name for name, value in first["final"].items() if not torch.equal(value, first["initial"][name])]
    assert changed == list(first["final"]), "every parameter was trained"
    tolerance = {"32-true": 1e-5, "bf16-mixed": 5e-2}[precision]
    for name, value in first["final"].items():
        torch.testing.assert_close(value, first["reference"][name], atol=tolerance, rtol=tolerance)
    assert first["dtype"] == ("torch.bfloat16" if precision == "bf16-mixed" else "torch.float32")
    assert first["shm_op"] is None, "DeepSpeed's CPU inference kernel is not compiled for training"
    if stage == 3:  # init_module partitioned the parameters as they were created: each process holds none in full
        assert first["local_numel"] == 0 < first["full_numel"]
    else:
        assert first["local_numel"] == first["full_numel"]


@RunIf(deepspeed=True)
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages_train_like_plain_data_parallel_in_fp32_and_bf16(stage: int) -> None:
    outcomes = [
        _unpack(payload) for payload in run_processes(_train_both_precisions, stage, world_size=2, timeout=RUN_TIMEOUT)
    ]
    for precision, results in zip(("32-true", "bf16-mixed"), zip(*outcomes)):
        _check_training(list(results), precision, stage)


def _train_both_precisions(rank: int, world_size: int, stage: int) -> bytes:
    return _pack([_train_stage(rank, world_size, stage, precision) for precision in ("32-true", "bf16-mixed")])


def _offload(rank: int, world_size: int) -> bytes:
    results = []
    for options in (
        {"stage": 2, "offload_optimizer": True},
        {"stage": 3, "offload_optimizer": True, "offload_parameters": True},
    ):
        strategy = _strategy(world_size, **options)
        torch.manual_seed(0)
        model = TinyMLP(FEATURES, 16, OUTPUTS)
        initial = {name: value.detach().clone() for name, value in model.state_dict().items()}
        strategy.module_to_device(model)
        engine, [optimizer] = strategy.setup_module_and_optimizers(
            model, [torch.optim.AdamW(model.parameters(), lr=0.01)]
        )
        _train(strategy, engine, optimizer, range(4), rank, world_size)
        offloaded = engine.zero_cpu_offload()
        results.append(
            {"final": _full_state(strategy, engine), "reference": _reference(initial, range(4)), "offload": offloaded}
        )
        strategy.teardown()
    return _pack(results)


@RunIf(deepspeed=True)
def test_cpu_optimizer_offload_trains_with_a_torch_optimizer() -> None:
    for stage_results in zip(
        *(_unpack(payload) for payload in run_processes(_offload, world_size=2, timeout=RUN_TIMEOUT))
    ):
        first, second = stage_results
        assert first["offload"]
        assert second["offload"]
        for name, value in first["final"].items():
            assert torch.equal(value, second["final"][name])
            torch.testing.assert_close(value, first["reference"][name], atol=1e-5, rtol=1e-5)


def _resume(rank: int, world_size: int, directory: str, stage: int) -> dict[str, Any]:
    def build(seed: int) -> tuple[DeepSpeedStrategy, Any, Any]:
        strategy = _strategy(world_size, "bf16-mixed", stage=stage)
        torch.manual_seed(seed)
        model = TinyMLP(FEATURES, 16, OUTPUTS)
        strategy.module_to_device(model)
        engine, [optimizer] = strategy.setup_module_and_optimizers(
            model, [torch.optim.AdamW(model.parameters(), lr=0.01)]
        )
        return strategy, engine, optimizer

    strategy, engine, optimizer = build(seed=0)
    _train(strategy, engine, optimizer, range(3), rank, world_size)
    strategy.save_checkpoint(directory, {"model": engine, "optimizer": optimizer, "step": 3, "note": {"run": "a"}})
    uninterrupted = _train(strategy, engine, optimizer, range(3, 7), rank, world_size)
    expected = _full_state(strategy, engine)
    strategy.teardown()

    strategy, engine, optimizer = build(seed=1)  # different weights: only the checkpoint can make them match
    state: dict[str, Any] = {"model": engine.module, "optimizer": optimizer, "step": 0}
    remainder = strategy.load_checkpoint(directory, state)
    resumed = _train(strategy, engine, optimizer, range(state["step"], 7), rank, world_size)
    actual = _full_state(strategy, engine)
    strategy.teardown()
    return {"expected": expected, "actual": actual, "losses": (uninterrupted, resumed), "remainder": remainder}


def _load_full_weights(rank: int, world_size: int, path: str) -> dict[str, bool]:
    strategy = _strategy(world_size, stage=3)
    torch.manual_seed(7)
    expected = TinyMLP(FEATURES, 16, OUTPUTS).state_dict()
    if rank == 0:
        torch.save(expected, path)
    strategy.barrier()
    with strategy.module_init_context(empty_init=True):
        model = TinyMLP(FEATURES, 16, OUTPUTS)
    engine, _ = strategy.setup_module_and_optimizers(model, [torch.optim.SGD(model.parameters(), lr=0.1)])
    remainder = strategy.load_checkpoint(path, engine.module)
    loaded = _full_state(strategy, engine)
    # a state without the engine (each process holds placeholders): one file, the weights gathered from both first
    strategy.save_checkpoint(f"{path}.state_dict", {"model": engine.module.state_dict()})
    saved = torch.load(f"{path}.state_dict", weights_only=True)["model"]
    strategy.teardown()
    return {
        "remainder_empty": remainder == {},
        **{name: torch.equal(loaded[name], value) for name, value in expected.items()},
        **{f"saved {name}": torch.equal(saved[name], value) for name, value in expected.items()},
    }


def _checkpoints(rank: int, world_size: int, directory: str) -> bytes:
    """Every checkpoint scenario in one pair of processes (starting processes that import DeepSpeed is slow)."""
    return _pack(
        {
            "resume_2": _resume(rank, world_size, os.path.join(directory, "stage2"), stage=2),
            "resume_3": _resume(rank, world_size, os.path.join(directory, "stage3"), stage=3),
            "full_weights": _load_full_weights(rank, world_size, os.path.join(directory, "full.pt")),
        }
    )


@pytest.fixture(scope="module")
def checkpoint_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("deepspeed_checkpoints")
    ranks = [
        _unpack(payload) for payload in run_processes(_checkpoints, str(directory), world_size=2, timeout=RUN_TIMEOUT)
    ]
    return {"ranks": ranks, "directory": directory}


@RunIf(deepspeed=True)
@pytest.mark.parametrize("stage", [2, 3])
def test_resume_from_a_checkpoint_is_bit_exact(checkpoint_runs: dict[str, Any], stage: int) -> None:
    for ranks in checkpoint_runs["ranks"]:
        result = ranks[f"resume_{stage}"]
        assert result["remainder"] == {"note": {"run": "a"}}
        assert result["losses"][0] == result["losses"][1]
        for name, value in result["expected"].items():
            assert torch.equal(value, result["actual"][name]), name
    directory = checkpoint_runs["directory"] / f"stage{stage}"
    assert (directory / "latest").read_text().strip() == "checkpoint"
    assert len(list((directory / "checkpoint").glob("*optim_states.pt"))) == 2, "one optimizer shard per process"


@RunIf(deepspeed=True)
def test_full_weights_load_into_zero3_and_its_state_dict_saves_gathered(checkpoint_runs: dict[str, Any]) -> None:
    for ranks in checkpoint_runs["ranks"]:
        matches = ranks["full_weights"]
        assert len(matches) == 9, matches
        assert all(matches.values()), matches
