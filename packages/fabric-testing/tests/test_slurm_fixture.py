"""``start_slurm_cluster`` starts a real cluster that runs jobs, and leaves no daemon or job behind when it stops."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fabric_testing import SlurmCluster, start_slurm_cluster


def test_the_cluster_runs_tasks_and_its_node_offers_the_cpus_asked(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["a-folder-deep-enough-that-a-socket-path-in-it-is-too-long"] * 2, "cluster")
    with start_slurm_cluster(deep, cpus=4) as cluster:
        assert cluster.command("sinfo", "--noheader", "--format=%N %T %c").split() == [cluster.node, "idle", "4"]
        out = cluster.command("srun", "--ntasks=4", "--label", sys.executable, "-c", "import os; print(os.getpid())")
        assert sorted(line.split(":")[0] for line in out.splitlines()) == ["0", "1", "2", "3"]
        job = tmp_path / "job.sh"
        job.write_text("#!/bin/bash\nsleep 599.5\n")
        job_id = cluster.submit(job, f"--output={tmp_path}/job.out")
        assert cluster.wait(job_id, states=("RUNNING",), timeout=60)["JobState"] == "RUNNING"
        daemons = [int(p.read_text()) for p in cluster.root.glob("*.pid")]
        sockets = Path(cluster.config.read_text().split("AuthInfo=socket=")[1].split(",")[0]).parent
        assert len(daemons) == 2  # slurmctld and slurmd (munged's pid file is in munge/)
    for pid in daemons:
        assert not os.path.exists(f"/proc/{pid}")
    assert not sockets.exists()
    # the running job was cancelled before the daemons stopped: its sleep is gone too
    found = subprocess.run(["pgrep", "-f", "^sleep 599.5$"], capture_output=True, text=True, check=False)
    assert found.stdout.strip() == ""


def test_the_session_fixture_is_a_running_cluster(slurm_cluster: SlurmCluster) -> None:
    assert slurm_cluster.config.is_file()
    assert slurm_cluster.env["SLURM_CONF"] == str(slurm_cluster.config)
    assert "idle" in slurm_cluster.command("sinfo", "--noheader", "--format=%T")
