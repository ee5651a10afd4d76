"""Fabric on a real Slurm cluster (fabric_testing's ``slurm_cluster``): srun and sbatch start DDP training, and a
time-limited job is warned, saves, is requeued and resumes to the weights of an uninterrupted run.

The job runs ``scripts/slurm_train.py`` as ``train.py`` through ``scripts/slurm_job.sh`` as ``job.sh``: the files
docs/guide/launching.md shows (``test_the_guide_shows_these_scripts`` keeps them the same).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from fabric_testing import SlurmCluster

SCRIPTS = Path(__file__).parent / "scripts"
TRAIN, JOB = SCRIPTS / "slurm_train.py", SCRIPTS / "slurm_job.sh"
GUIDE = Path(__file__).parents[1] / "docs" / "guide" / "launching.md"
STEPS = 90
STEP_TIME = "0.5"  # 45 s of training: the warning comes within about 31 s of its start


def job_folder(helpers: Any, cluster: SlurmCluster, folder: Path) -> dict[str, str]:
    """Put ``train.py`` and ``job.sh`` in ``folder``; return the environment jobs submitted from there get."""
    shutil.copy(TRAIN, folder / "train.py")
    shutil.copy(JOB, folder / "job.sh")
    env = helpers.command_environment()
    env.pop("MASTER_PORT")  # derived from the job id, as on a real cluster
    env["SLURM_CONF"] = cluster.env["SLURM_CONF"]
    # `python` in the job is this test's interpreter, with the packages installed for it
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), cluster.env["PATH"]])
    return env


def reports(folder: Path) -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted((folder / "reports").glob("*.json"))}


def check_tasks(found: dict[str, dict[str, Any]], cluster: SlurmCluster, attempt: int = 0) -> dict[str, Any]:
    """Both tasks of one attempt saw SLURMEnvironment, their own rank in a world of 2 and the same step."""
    tasks = [found[f"attempt{attempt}-rank{rank}"] for rank in (0, 1)]
    job_id = int(tasks[0]["job_id"])
    for rank, task in enumerate(tasks):
        assert task["environment"] == "SLURMEnvironment"
        assert (task["global_rank"], task["local_rank"], task["node_rank"], task["world_size"]) == (rank, rank, 0, 2)
        assert task["main_address"] == cluster.node  # the first host of the node list
        assert task["main_port"] == 15000 + job_id % 10000  # from the job id: the same in both tasks
    fields = ("first_step", "last_step", "preempted", "job_id")
    assert {tuple(task[f] for f in fields) for task in tasks} == {tuple(tasks[0][f] for f in fields)}, tasks
    return tasks[0]


def model_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, weights_only=True)["model"]


@pytest.fixture(scope="module")
def reference(helpers: Any, slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``srun --ntasks=2 python train.py``: an uninterrupted run of every step; the folder it ran in."""
    folder = tmp_path_factory.mktemp("srun")
    env = job_folder(helpers, slurm_cluster, folder)
    command = ["srun", "--ntasks=2", "python", "train.py", "--steps", str(STEPS), "--report", "reports"]
    result = helpers.run_command(command, folder, env=env, timeout=240)
    assert result.returncode == 0, result.describe()
    assert result.output.count(f"finished: saved step {STEPS}") == 1, result.output
    return folder


def test_srun_starts_ddp_training_that_detects_slurm(reference: Path, slurm_cluster: SlurmCluster) -> None:
    task = check_tasks(reports(reference), slurm_cluster)
    assert (task["first_step"], task["last_step"], task["preempted"]) == (0, STEPS, False)
    # written once, by global rank 0, into its final place: no per-rank copy, no temporary file left
    assert [p.name for p in (reference / "checkpoints").iterdir()] == ["last.ckpt"]
    assert torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)["step"] == STEPS


def test_a_warned_job_saves_is_requeued_and_resumes_bit_identically(
    helpers: Any, slurm_cluster: SlurmCluster, reference: Path, tmp_path: Path
) -> None:
    """``sbatch job.sh``: its ``--signal=B:USR1@30`` warns the first run before the time limit; the run saves and
    exits, and the job file requeues the job. The second run resumes from the checkpoint and ends with the weights of
    the uninterrupted srun run.

    Slurm looks at time limits every 30 s and warns once the limit is less than 60 s away (the 30 s asked for plus
    one check), so a 1-minute job is warned at its first check, maybe while its tasks still start (they would die
    of SIGUSR1's default action). The job therefore starts with 5 minutes; once training runs, its limit becomes
    the next whole minute (1 minute, as in the job file, unless the tasks took a minute to start): the warning
    comes at the next check, within 30 s. The test cluster ends a job one minute after its limit
    (``OverTimeLimit=1``), so the end comes at least one check after the warning. The second run gets 5 minutes
    and is not warned.
    """
    env = job_folder(helpers, slurm_cluster, tmp_path)
    args = ["--steps", str(STEPS), "--step-time", STEP_TIME, "--report", "reports"]
    job_id = slurm_cluster.submit(tmp_path / "job.sh", "--time=5", f"--chdir={tmp_path}", args=args, env=env)
    log = tmp_path / f"train-{job_id}.out"
    deadline = time.monotonic() + 180
    while "training from step 0" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, f"training did not start within 180 s: {slurm_cluster.job(job_id)}"
        time.sleep(0.2)
    running = seconds(slurm_cluster.job(job_id)["RunTime"])
    slurm_cluster.command("scontrol", "update", f"jobid={job_id}", f"TimeLimit={running // 60 + 1}")
    fields = slurm_cluster.wait(job_id, states=("PENDING", "COMPLETED", "FAILED", "TIMEOUT"), timeout=180)
    assert (fields["JobState"], fields["Restarts"]) == ("PENDING", "1"), log.read_text()
    slurm_cluster.command("scontrol", "update", f"jobid={job_id}", "TimeLimit=5")
    fields = slurm_cluster.wait(job_id, timeout=240)  # a requeued job starts again after about 12 s
    output = log.read_text()
    assert (fields["JobState"], fields["Restarts"], fields["ExitCode"]) == ("COMPLETED", "1", "0:0"), output

    found = reports(tmp_path)
    first, second = check_tasks(found, slurm_cluster, attempt=0), check_tasks(found, slurm_cluster, attempt=1)
    stopped = first["last_step"]
    assert (first["first_step"], first["preempted"]) == (0, True), first
    assert 0 < stopped < STEPS, first
    assert (second["first_step"], second["last_step"], second["preempted"]) == (stopped, STEPS, False), second
    assert second["job_id"] == first["job_id"] == str(job_id)
    assert re.findall(r"(preempted|finished): saved step (\d+)", output) == [
        ("preempted", str(stopped)),
        ("finished", str(STEPS)),
    ]
    weights, expected = (
        model_weights(tmp_path / "checkpoints" / "last.ckpt"),
        model_weights(reference / "checkpoints" / "last.ckpt"),
    )
    different = [name for name in expected if not torch.equal(weights[name], expected[name])]
    assert not different, f"resumed at step {stopped}, these weights differ from the uninterrupted run: {different}"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last.ckpt"]


def seconds(duration: str) -> int:
    """Slurm's ``[days-]hours:minutes:seconds`` in seconds."""
    days, _, clock = duration.rpartition("-")
    hours, minutes, secs = (int(part) for part in clock.split(":"))
    return int(days or 0) * 86400 + hours * 3600 + minutes * 60 + secs


def fenced_blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", markdown, flags=re.DOTALL)


def test_the_guide_shows_these_scripts() -> None:
    guide = GUIDE.read_text()
    assert JOB.read_text() in fenced_blocks(guide, "bash"), f"{GUIDE} must show {JOB.name} as it is"
    assert TRAIN.read_text() in fenced_blocks(guide, "python"), f"{GUIDE} must show {TRAIN.name} as it is"
