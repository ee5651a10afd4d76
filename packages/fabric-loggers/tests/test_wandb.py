"""``WandbLogger`` in offline mode (no network), each run read back from its local files with wandb's own reader,
``wandb leet inspect`` (wandb 0.31 and later)."""

import json
import os
import pickle
import re
import subprocess
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest
import torch

from fabric_loggers import WandbLogger
from fabric_loggers.wandb_logs import STEP_METRIC as STEP
from fabric_loggers.wandb_logs import WANDB
from fabric_testing import run_processes
from fabric_utils import FabricWarning, MissingDependencyError, package_version


def _leet_available() -> bool:
    from packaging.version import Version

    found = package_version("wandb") if WANDB else None
    return found is not None and found >= Version("0.31")


needs_wandb = pytest.mark.skipif(
    not _leet_available(),
    reason="wandb>=0.31 (its `wandb leet inspect` reader) is not installed: pip install 'fabric-loggers[test]'",
)


def offline_env(root: Path) -> dict[str, str]:
    """Offline, quiet, every W&B folder (settings, cache, artifacts) under ``root``."""
    return {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DIR": str(root / "wandb-dir"),
        "WANDB_CONFIG_DIR": str(root / "config"),
        "WANDB_CACHE_DIR": str(root / "cache"),
        "WANDB_DATA_DIR": str(root / "data"),
        "WANDB_ARTIFACT_DIR": str(root / "artifacts"),
    }


@pytest.fixture(autouse=True)
def wandb_offline(tmp_path, monkeypatch):
    """Each test runs offline with its W&B folders in tmp_path; afterwards wandb's service process, its threads and
    its WANDB_SERVICE variable are ended with ``wandb.teardown()`` (they outlive ``finish`` by design)."""
    for key, value in offline_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    yield
    if WANDB:
        import wandb

        wandb.teardown()


def leet(run_dir: str, *options: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", *options, run_dir],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def records(run_dir: str) -> list[dict[str, Any]]:
    """Every record of the run's ``.wandb`` log, as wandb's reader prints them."""
    return [json.loads(line) for line in leet(run_dir).splitlines() if line.strip()]


def history(run_dir: str) -> list[dict[str, Any]]:
    """The run's history rows without wandb's own ``_runtime``/``_timestamp``/``_step`` keys."""
    rows = [record["history"]["item"] for record in records(run_dir) if record["type"] == "history"]
    return [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]


def summary(run_dir: str) -> dict[str, Any]:
    """The run's state, config and summary (``wandb leet inspect --summary --json``)."""
    return json.loads(leet(run_dir, "--summary"))


def run_folders(save_dir: Path) -> list[str]:
    return sorted(p.name for p in (save_dir / "wandb").glob("*run-*"))


def test_a_missing_wandb_names_the_extra(hide_module):
    hide_module("wandb")
    with pytest.raises(MissingDependencyError, match=re.escape("pip install 'fabric-loggers[wandb]'")):
        WandbLogger()


@needs_wandb
def test_metrics_config_and_summary_offline(tmp_path):
    logger = WandbLogger(name="first", save_dir=tmp_path / "runs", project="fabric-tests", id="run-one", offline=True)
    assert (logger.name, logger.version, logger.log_dir) == ("first", "run-one", None)
    assert logger.root_dir == str(tmp_path / "runs")
    logger.log_hyperparams({"lr": 0.1, "optim": {"name": "adam", "betas": (0.9, 0.99)}, "args": Namespace(a=1)})
    logger.log_metrics({"loss": torch.tensor(1.5)}, step=0)
    logger.log_metrics({"loss": 1.0, "acc": torch.tensor([0.25])}, step=1)
    logger.log_metrics({"val_loss": 0.75}, step=0)  # an earlier step is kept: it is a metric, not W&B's own step
    logger.log_metrics({"free": 3})
    logger.log_summary({"best_acc": torch.tensor(0.25), "note": "ok"})
    run_dir = logger.log_dir
    assert run_dir is not None
    assert Path(run_dir).parent == tmp_path / "runs" / "wandb"
    logger.finalize("success")
    assert logger.log_dir is None  # the run is finished

    assert history(run_dir) == [
        {"loss": 1.5, "trainer/global_step": 0},
        {"loss": 1, "acc": 0.25, "trainer/global_step": 1},
        {"val_loss": 0.75, "trainer/global_step": 0},
        {"free": 3, "trainer/global_step": 0},  # without a step, W&B's step_sync repeats the last one logged
    ]
    state = summary(run_dir)
    assert (state["run_id"], state["name"], state["project"]) == ("run-one", "first", "fabric-tests")
    assert (state["state"], state["exit_code"]) == ("finished", 0)
    assert state["config"] == {"lr": 0.1, "optim": {"name": "adam", "betas": [0.9, 0.99]}, "args": {"a": 1}}
    assert state["summary"]["best_acc"] == 0.25
    assert state["summary"]["note"] == "ok"
    assert state["summary"]["loss"] == 1  # W&B keeps the last value of each metric there
    metric_records = [r["metric"] for r in records(run_dir) if r["type"] == "metric"]
    step_axis = {"glob_name": "*", "options": {"defined": True, "step_sync": True}, "step_metric": STEP}
    assert step_axis in metric_records


@needs_wandb
def test_resume_by_id_and_a_failed_run(tmp_path):
    save_dir = tmp_path / "runs"
    first = WandbLogger(save_dir=save_dir, version="resumed")
    first.log_hyperparams({"lr": 0.1})
    first.log_metrics({"loss": 2.0}, step=0)
    first_dir = first.log_dir
    first.finalize("failed")
    assert summary(first_dir)["exit_code"] == 1

    second = WandbLogger(save_dir=save_dir, id="resumed", prefix="train")
    second.log_hyperparams({"lr": 0.05, "epochs": 3})  # a name logged again takes the new value
    second.log_metrics({"loss": 1.0}, step=1)
    second_dir = second.log_dir
    second.finalize("success")

    # offline, each session writes its own folder under the same run id; `wandb sync` merges them into one run
    assert second_dir != first_dir
    assert len(run_folders(save_dir)) == 2
    run_record = next(r["run"] for r in records(second_dir) if r["type"] == "run")
    assert (run_record["run_id"], run_record["resume"]) == ("resumed", True)
    assert history(second_dir) == [{"train-loss": 1.0, "trainer/global_step": 1}]
    state = summary(second_dir)
    assert state["config"] == {"lr": 0.05, "epochs": 3}
    assert (state["state"], state["exit_code"]) == ("finished", 0)


def log_from_each_rank(rank: int, world_size: int, save_dir: str) -> tuple[str | None, str | None]:
    logger = WandbLogger(save_dir=save_dir, id="ddp-run", offline=True)
    logger.log_hyperparams({"rank": rank})
    for step in range(3):
        logger.log_metrics({"rank": rank, "value": step}, step=step)
    logger.log_summary({"final_rank": rank})
    log_dir = logger.log_dir
    logger.finalize("success")
    torch.distributed.barrier()
    return log_dir, logger.version if rank == 0 else None


@needs_wandb
def test_only_rank_zero_logs_in_a_two_process_run(tmp_path):
    save_dir = tmp_path / "runs"
    results = run_processes(log_from_each_rank, str(save_dir), world_size=2)
    assert results[1] == (None, None)
    run_dir, version = results[0]
    assert version == "ddp-run"
    assert len(run_folders(save_dir)) == 1
    assert history(run_dir) == [{"rank": 0, "value": step, "trainer/global_step": step} for step in range(3)]
    state = summary(run_dir)
    assert state["config"] == {"rank": 0}
    assert state["summary"]["final_rank"] == 0


@needs_wandb
def test_nothing_is_logged_off_rank_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    logger = WandbLogger(save_dir=tmp_path / "runs", offline=True)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"a": 1.0})
    logger.log_summary({"b": 2})
    logger.experiment.log({"c": 3})  # the stand-in accepts every call
    logger.finalize("success")
    assert logger.log_dir is None
    assert not (tmp_path / "runs").exists()


@needs_wandb
def test_an_active_run_is_used_with_a_warning_and_a_pickled_copy_resumes(tmp_path):
    import wandb

    run = wandb.init(dir=str(tmp_path), id="outer", project="fabric-tests")
    logger = WandbLogger(save_dir=tmp_path / "unused")
    with pytest.warns(FabricWarning, match="already active"):
        logger.log_metrics({"a": 1.0}, step=0)
    assert logger.version == "outer"
    run_dir = logger.log_dir
    copy = pickle.loads(pickle.dumps(logger))
    assert copy.version == "outer"
    logger.finalize("success")
    assert wandb.run is None
    assert history(run_dir) == [{"a": 1.0, "trainer/global_step": 0}]
    assert run.id == "outer"
    assert not (tmp_path / "unused").exists()


@needs_wandb
def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="version='a' and id='b' name different runs"):
        WandbLogger(version="a", id="b")
    with pytest.raises(TypeError, match=r"save_dir must be a str or os\.PathLike"):
        WandbLogger(save_dir=3)  # type: ignore[arg-type]
    logger = WandbLogger(save_dir=tmp_path / "runs")
    with pytest.raises(ValueError, match="'trainer/global_step' is reserved"):
        logger.log_metrics({"trainer/global_step": 1})
    with pytest.raises(ValueError, match=r"'loss'.*not a scalar"):
        logger.log_metrics({"loss": torch.ones(2)})
    with pytest.raises(TypeError, match="summary must be a mapping"):
        logger.log_summary(["best", 1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes only `params`"):
        logger.log_hyperparams({"a": 1}, {"metric": 1})
    logger.save()
    logger.finalize("success")  # nothing was logged: no run was started
    assert not (tmp_path / "runs").exists()
    assert os.environ["WANDB_MODE"] == "offline"
