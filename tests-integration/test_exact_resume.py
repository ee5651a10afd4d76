"""Stop mid-epoch, save, resume in a new process: the final weights are bit-identical to an uninterrupted run.

``scripts/train.py`` trains 12 Adam steps on shuffled data with 16-mixed precision whose GradScaler doubles its
scale every step, so it overflows float16, skips steps and halves the scale again: a resumed run must restore the
model, the optimizer state, the dataloader position (mid-epoch, in the shuffled order) and the scaler to match.
Each configuration is run three times as fresh processes: uninterrupted; stopped (after saving) at step 5; resumed
from that checkpoint to step 12. The 12 steps cross an epoch boundary after the resume.

Then ``fabric run --max-restarts 1`` with a crash at step 5 and a checkpoint every 3 steps: the job restarts,
resumes from step 3 and must end with the weights of the uninterrupted DDP run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from fabric_strategies import consolidate_sharded_checkpoint

STEPS, STOP_AT = 12, 5
UNSCALED_GROWTH = 2.0**12 * 2**STEPS  # the scale after STEPS steps if no step had overflowed

CONFIGS = {
    # name -> script arguments; every one uses 16-mixed with a GradScaler (GradScaler("cpu"), ShardedGradScaler)
    "single": ["--devices", "1"],
    "ddp": ["--strategy", "ddp", "--devices", "2"],
    "fsdp": ["--strategy", "fsdp", "--devices", "2"],
}
BATCHES_PER_EPOCH = {"single": 8, "ddp": 4, "fsdp": 4}  # 64 samples, batches of 8, split across the processes


def train(helpers: Any, workdir: Path, config: str, *extra: str, fabric_run: list[str] | None = None) -> Any:
    args = [*CONFIGS[config], "--eager-scaler", "--steps", str(STEPS), "--pid-dir", str(workdir / "pids"), *extra]
    command = helpers.train_command("run" if fabric_run else "launch", *args, fabric_run=fabric_run)
    result = helpers.run_command(command, workdir, timeout=240, pid_dir=workdir / "pids", settle=10)
    assert not result.leftovers, f"processes left running: {result.leftovers}\n{result.describe()}"
    return result


def uninterrupted(helpers: Any, workdir: Path, config: str) -> dict[str, Any]:
    (workdir / "pids").mkdir(exist_ok=True)
    result = train(helpers, workdir, config, "--out", str(workdir / "reference.pt"))
    assert result.returncode == 0, result.describe()
    reference = torch.load(workdir / "reference.pt", weights_only=True)
    assert len(reference["losses"]) == STEPS
    # the scaler overflowed at least once (it would otherwise have doubled every step): its state matters
    assert reference["scale"] < UNSCALED_GROWTH, reference["scale"]
    return reference


@pytest.fixture(scope="module")
def references(helpers: Any, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, Any]]:
    """Uninterrupted runs, computed once per configuration and shared by the tests of this module."""
    cache: dict[str, Any] = {}

    def get(config: str) -> dict[str, Any]:
        if config not in cache:
            cache[config] = uninterrupted(helpers, tmp_path_factory.mktemp(f"reference-{config}"), config)
        return cache[config]

    return get


def checkpoint_contents(path: Path, workdir: Path) -> dict[str, Any]:
    if path.is_dir():  # a sharded checkpoint: read it whole, in this process, without a process group
        path = Path(consolidate_sharded_checkpoint(path, workdir / "consolidated.pt"))
    return torch.load(path, weights_only=True)


def assert_same_run(result: dict[str, Any], reference: dict[str, Any], first_step: int) -> None:
    assert result["losses"] == reference["losses"][first_step:], (result["losses"], reference["losses"])
    assert result["scale"] == reference["scale"]
    assert result["weights"].keys() == reference["weights"].keys()
    weights = reference["weights"]
    different = [name for name, value in weights.items() if not torch.equal(result["weights"][name], value)]
    assert not different, f"weights differ from the uninterrupted run's (not bit-identical): {different}"


@pytest.mark.parametrize("config", ["single", "ddp", "fsdp"])
def test_resume_mid_epoch_in_a_new_process(helpers: Any, workdir: Path, config: str, references: Any) -> None:
    reference = references(config)
    checkpoint = workdir / "checkpoint"
    stopped = train(helpers, workdir, config, "--stop-at", str(STOP_AT), "--ckpt", str(checkpoint))
    assert stopped.returncode == 0, stopped.describe()
    assert f"stopped after step {STOP_AT}" in stopped.output, stopped.describe()
    saved = checkpoint_contents(checkpoint, workdir)
    assert saved["step"] == STOP_AT
    # the checkpoint was taken mid-epoch
    assert saved["loader"]["in_progress"] is True
    assert saved["loader"]["batches_consumed"] == STOP_AT % BATCHES_PER_EPOCH[config] != 0
    assert saved["precision"]["scale"] != 2.0**12  # the scaler's state is part of it

    resumed = train(helpers, workdir, config, "--resume", "--ckpt", str(checkpoint), "--out", str(workdir / "out.pt"))
    assert resumed.returncode == 0, resumed.describe()
    assert f"finished {STEPS} steps" in resumed.output, resumed.describe()
    assert_same_run(torch.load(workdir / "out.pt", weights_only=True), reference, STOP_AT)


def test_fabric_run_restarts_after_a_crash_and_resumes(helpers: Any, workdir: Path, references: Any) -> None:
    reference = references("ddp")
    checkpoint = workdir / "checkpoint.ckpt"
    extra = ["--save-every", "3", "--resume", "--ckpt", str(checkpoint), "--out", str(workdir / "out.pt")]
    # the crash: rank 1 raises at step 5 of the first attempt; the last checkpoint was taken at step 3. A short
    # process-group timeout bounds a stuck rendezvous of the restarted attempt.
    extra += ["--fail", "1:5:raise", "--fail-once", "--timeout", "20"]
    options = ["--accelerator", "cpu", "--devices", "2", "--max-restarts", "1"]
    result = train(helpers, workdir, "ddp", *extra, fabric_run=options)
    assert "injected failure for the integration test" in result.output, result.describe()  # attempt 1 crashed
    # the restarted attempt forms its process group in a store of its own (not the failed attempt's)
    assert result.returncode == 0, result.describe()
    assert re.search(r"resumed from \S+ at step 3\b", result.output), result.describe()
    assert len(helpers.recorded_ranks(workdir / "pids")) == 4  # two attempts of two processes
    assert_same_run(torch.load(workdir / "out.pt", weights_only=True), reference, 3)
