"""A real Slurm cluster on this host for tests: munged, slurmctld and slurmd started from a generated configuration.

Configuration, key, state and logs live in one directory (the sockets in a short folder under /tmp: a Unix socket's
path may not exceed 107 bytes, and nox's temporary folders are deep); the daemons run in the foreground
as children of the test process, on free ports, and are stopped when the block ends. Needs root and Debian's
``slurm-wlm`` and ``munge`` packages (``apt-get install slurm-wlm munge``; the fabric-environments and integration
nox sessions install them); elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from fabric_testing.launcher import find_free_port

#: the programs a cluster needs, with the Debian package that has each
SLURM_PROGRAMS = {
    "munged": "munge",
    "slurmctld": "slurm-wlm",
    "slurmd": "slurm-wlm",
    "sinfo": "slurm-wlm",
    "srun": "slurm-wlm",
    "sbatch": "slurm-wlm",
    "scontrol": "slurm-wlm",
}
PARTITION = "debug"
#: job states after which a job never runs again (a requeued job goes back to PENDING instead)
FINISHED_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"})

_CONFIG = """\
ClusterName=fabrictest
FirstJobId={first_job_id}
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={sockets}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
KillWait=5
OverTimeLimit=1
MinJobAge=600
InactiveLimit=0
PropagateResourceLimits=NONE
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass(frozen=True)
class SlurmCluster:
    """A running single-node cluster (see :func:`start_slurm_cluster`); its commands need :attr:`env`, where
    ``SLURM_CONF`` names the configuration."""

    root: Path
    node: str
    cpus: int
    env: Mapping[str, str]

    @property
    def config(self) -> Path:
        return self.root / "slurm.conf"

    def command(self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60) -> str:
        """Run a Slurm command (``sinfo``, ``scontrol``, ...) against this cluster; its stdout, or a failed test."""
        done = subprocess.run(
            list(args), env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            pytest.fail(f"`{' '.join(args)}` exited with {done.returncode}: {done.stderr.strip()}\n{self.logs()}")
        return done.stdout

    def submit(
        self,
        script: str | os.PathLike[str],
        *options: str,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> int:
        """``sbatch [options] script [args]``: submit a job file; return the job id."""
        output = self.command("sbatch", "--parsable", *options, str(script), *args, env=env)
        return int(output.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job``'s fields of a job (``JobState``, ``RestartCnt``, ``ExitCode``, ...)."""
        fields: dict[str, str] = {}
        for item in self.command("scontrol", "show", "job", "--oneliner", str(job_id)).split():
            key, _, value = item.partition("=")
            fields[key] = value
        return fields

    def wait(self, job_id: int, states: Sequence[str] = tuple(FINISHED_STATES), timeout: float = 180) -> dict[str, str]:
        """Poll the job until its state is one of ``states``; its fields then (a failed test past ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            fields = self.job(job_id)
            if fields.get("JobState") in states:
                return fields
            if time.monotonic() > deadline:
                pytest.fail(f"job {job_id} is still {fields.get('JobState')} after {timeout}s\n{self.logs()}")
            time.sleep(0.5)

    def logs(self, tail: int = 3000) -> str:
        """The end of each daemon's log, for failure messages."""
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            path = self.root / name
            text = path.read_text(errors="replace")[-tail:] if path.exists() else "(none)"
            parts.append(f"--- {name}\n{text}")
        return "\n".join(parts)


def missing_slurm() -> str | None:
    """Why no cluster can start here (not root, programs missing), or ``None`` when one can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "a Slurm cluster for tests runs its daemons as root (SlurmUser=root), and this process is not root"
    path = _search_path()
    missing = sorted({package for program, package in SLURM_PROGRAMS.items() if not shutil.which(program, path=path)})
    if missing:
        return f"Slurm is not installed: `apt-get install {' '.join(missing)}` (the nox session installs it as root)"
    return None


def _search_path() -> str:
    """``PATH`` with the system folders where Debian puts the daemons (a non-login shell may lack them)."""
    return os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"])


def _node_name() -> str:
    """This host's name when it resolves (as on a real cluster, the node list names the host), else localhost."""
    name = socket.gethostname()
    try:
        socket.gethostbyname(name)
    except OSError:
        return "localhost"
    return name


@contextmanager
def start_slurm_cluster(directory: str | os.PathLike[str], *, cpus: int = 8) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd with a configuration in ``directory``; stop them after the block.

    The node offers ``cpus`` CPUs whatever the machine has (``SlurmdParameters=config_overrides``), so that several
    tasks fit on a small machine. ``AuthInfo=cred_expire=10`` and a scheduler pass every 2 s let a requeued job
    start again about 12 s after the requeue (Slurm's defaults wait 2 minutes or more). ``OverTimeLimit=1`` ends a
    job one minute after its time limit instead of at it: a test can lower a running job's limit so that the
    warning of ``--signal`` comes at slurmctld's next time-limit check (every 30 s) and still leave the job a whole
    check to save and requeue. Skips the test, with the reason, where no cluster can start (see
    :func:`missing_slurm`).
    """
    reason = missing_slurm()
    if reason is not None:
        pytest.skip(reason)
    root = Path(directory).resolve()
    for sub in ("state", "munge"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "munge", 0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    sockets = Path(tempfile.mkdtemp(prefix="fabric-slurm-", dir="/tmp"))  # slurmd's step sockets are in its spool
    (sockets / "spool").mkdir()
    munge_socket = sockets / "munge.socket"
    node = _node_name()
    values = {
        "root": root,
        "node": node,
        "cpus": cpus,
        "munge_socket": munge_socket,
        "sockets": sockets,
        "ctld_port": find_free_port(),
        "slurmd_port": find_free_port(),
        "partition": PARTITION,
        "first_job_id": _first_job_id(),
    }
    (root / "slurm.conf").write_text(_CONFIG.format(**values))
    # cgroup.conf is read by slurmd even without cgroup plugins; an empty one stops it looking in /etc/slurm
    (root / "cgroup.conf").write_text("")
    # a SLURM_JOB_ID of an outer allocation (a test run inside a Slurm job) would make srun join that job
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["SLURM_CONF"] = str(root / "slurm.conf")
    env["PATH"] = _search_path()
    cluster = SlurmCluster(root=root, node=node, cpus=cpus, env=env)
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, sockets, ignore_errors=True)
        munged = [
            "munged",
            "--foreground",
            "--force",
            f"--socket={munge_socket}",
            f"--key-file={key}",
            f"--log-file={root / 'munged.log'}",
            f"--pid-file={root / 'munge' / 'munged.pid'}",
            f"--seed-file={root / 'munge' / 'munged.seed'}",
        ]
        stack.enter_context(_daemon(munged, root / "munged.out", env))
        _wait_for(lambda: munge_socket.exists(), "munged to open its socket", cluster)
        stack.enter_context(_daemon(["slurmctld", "-D", "-c", "-f", str(cluster.config)], root / "slurmctld.out", env))
        stack.enter_context(_daemon(["slurmd", "-D", "-N", node, "-f", str(cluster.config)], root / "slurmd.out", env))
        _wait_for(lambda: _node_is_idle(cluster), f"node {node} to be idle in sinfo", cluster)
        stack.callback(_cancel_every_job, cluster)  # before the daemons stop: no task outlives the cluster
        yield cluster


@contextmanager
def _daemon(command: list[str], output: Path, env: Mapping[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` in its own session for the block; then SIGTERM it (SIGKILL after 10 s) and reap it."""
    with open(output, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=dict(env), start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _first_job_id() -> int:
    """A random first job id whose derived port (``SLURMEnvironment``: 15000 + the id's last four digits) is free,
    so that clusters started at the same time on one host do not give their jobs the same port."""
    while True:
        job_id = random.SystemRandom().randrange(1000, 9000)  # the global generator stays untouched
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", 15000 + job_id))
            except OSError:
                continue
        return job_id


def _cancel_every_job(cluster: SlurmCluster) -> None:
    env = dict(cluster.env)
    subprocess.run(["scancel", "--quiet", f"--partition={PARTITION}"], env=env, check=False, timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        done = subprocess.run(["squeue", "--noheader"], env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not done.stdout.strip():
            return
        time.sleep(0.2)


def _node_is_idle(cluster: SlurmCluster) -> bool:
    done = subprocess.run(
        ["sinfo", "--noheader", "--format=%T", "--nodes", cluster.node],
        env=dict(cluster.env),
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode == 0 and done.stdout.strip() == "idle"


def _wait_for(condition: Callable[[], bool], what: str, cluster: SlurmCluster, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"Timed out after {timeout}s waiting for {what}\n{cluster.logs()}")
        time.sleep(0.1)
