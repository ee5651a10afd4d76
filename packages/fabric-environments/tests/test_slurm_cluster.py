"""``SLURMEnvironment`` in tasks that a real Slurm cluster started (fabric_testing's ``slurm_cluster`` fixture).

Each task runs ``scripts/slurm_task.py``: it detects its environment from the variables srun set, checks them, joins
a gloo group at the main address and port the environment derives, and reports what it saw.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from fabric_testing import SlurmCluster

TASK = Path(__file__).parent / "scripts" / "slurm_task.py"
_NOT_FOR_JOBS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE")


def job_environment(cluster: SlurmCluster) -> dict[str, str]:
    """The cluster's command environment without launcher variables of this process (the job must set its own)."""
    env = {k: v for k, v in cluster.env.items() if k not in _NOT_FOR_JOBS and not k.startswith("PYTEST_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def reports(folder: Path) -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("rank*.json"))}


def srun(cluster: SlurmCluster, folder: Path, *options: str, devices: int) -> dict[str, dict[str, Any]]:
    command = ["srun", *options, sys.executable, str(TASK), str(folder), "--devices", str(devices)]
    done = subprocess.run(command, env=job_environment(cluster), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{command} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return reports(folder)


def check_world(found: dict[str, dict[str, Any]], cluster: SlurmCluster, world_size: int) -> None:
    assert sorted(found) == [f"rank{rank}-restartNone" for rank in range(world_size)]
    job_ids = {report["job_id"] for report in found.values()}
    assert len(job_ids) == 1
    job_id = job_ids.pop()
    assert isinstance(job_id, int)
    for rank in range(world_size):
        report = found[f"rank{rank}-restartNone"]
        assert report == {
            "environment": "SLURMEnvironment",
            "global_rank": rank,
            "local_rank": rank,
            "node_rank": 0,
            "world_size": world_size,
            "main_address": cluster.node,  # the first host of SLURM_NODELIST
            "main_port": 15000 + job_id % 10000,  # derived from the job id: the same in every task
            "job_id": job_id,
            "creates_processes_externally": True,
            "preemption_signals": [int(signal.SIGUSR1)],
            "sum_of_ranks": sum(range(world_size)),
            "restarts": None,
        }


def test_srun_tasks_detect_slurm_and_form_one_world(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    check_world(srun(slurm_cluster, tmp_path, "--ntasks=2", devices=2), slurm_cluster, 2)


def test_a_batch_job_step_requeues_its_job(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """In an sbatch job (``--ntasks-per-node=2``, checked against ``devices``), global rank 0 requeues the job with
    ``SLURMEnvironment.requeue()``: Slurm counts a restart."""
    job = tmp_path / "job.sh"
    job.write_text(f"#!/bin/bash\nsrun {sys.executable} {TASK} {tmp_path} --devices 2 --requeue\n")
    job_id = slurm_cluster.submit(
        job,
        "--ntasks-per-node=2",
        "--requeue",
        f"--chdir={tmp_path}",
        f"--output={tmp_path}/job.out",
        "--open-mode=append",
        env=job_environment(slurm_cluster),
    )
    fields = slurm_cluster.wait(job_id, states=("PENDING", "COMPLETED", "FAILED"), timeout=120)
    while fields["Restarts"] == "0" and fields["JobState"] == "PENDING":  # waiting for the first start
        fields = slurm_cluster.wait(job_id, states=("RUNNING", "COMPLETED", "FAILED"), timeout=60)
        fields = slurm_cluster.wait(job_id, states=("PENDING", "COMPLETED", "FAILED"), timeout=120)
    output = (tmp_path / "job.out").read_text() if (tmp_path / "job.out").exists() else ""
    assert fields["Restarts"] == "1", f"{fields}\n{output}"
    slurm_cluster.command("scancel", str(job_id))  # the requeued job would start again in ~30 s: not needed here
    found = reports(tmp_path)
    assert sorted(found) == ["rank0-restartNone", "rank1-restartNone"], output
    assert found["rank0-restartNone"]["job_id"] == job_id
    assert {report["world_size"] for report in found.values()} == {2}
