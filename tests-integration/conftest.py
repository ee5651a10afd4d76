"""Shared helpers of the integration tests: run a command in its own session, watch every process it starts.

Commands run with ``start_new_session=True``, so every process they start (unless it opens a session of its own,
as torch's elastic launcher does for its workers) shares the command's session id; the training script also
records the pid and start time of every rank in a directory. After a run, ``/proc`` tells whether any of those
processes is still alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fabric_testing import find_free_port, preload_in_fork_server

# Most processes that run_processes forks for these tests use FSDP or torch's distributed checkpoints: the fork
# server imports these once for all of them (besides torch and torch._dynamo, which it always imports), and
# deepspeed (1.7 s of CPU per process otherwise) where it is installed.
preload_in_fork_server("torch.distributed.fsdp", "torch.distributed.checkpoint", "deepspeed")

SCRIPTS = Path(__file__).parent / "scripts"
TRAIN_SCRIPT = SCRIPTS / "train.py"
# variables of this test process that must not reach the commands (they would configure Fabric or torchrun)
_PRIVATE_PREFIXES = ("FABRIC_", "PYTEST_", "TORCHELASTIC_")
_PRIVATE = {"MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK"}


def command_environment() -> dict[str, str]:
    """This process's environment without fabric/torchrun variables, with a free port and unbuffered output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE_PREFIXES) and k not in _PRIVATE}
    env["MASTER_PORT"] = str(find_free_port())
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"  # a SIGABRT sent to a stuck process prints where it is stuck
    return env


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state is [0], session [3]), or None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def is_alive(pid: int, start_time: str | None = None) -> bool:
    """Whether ``pid`` runs (zombies count as ended); with ``start_time``, only if it is that same process."""
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return start_time is None or fields[19] == start_time


def session_processes(session: int) -> list[int]:
    """Pids of the running processes whose session id is ``session``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and fields[0] not in ("Z", "X") and int(fields[3]) == session:
                found.append(int(entry))
    return found


def recorded_ranks(pid_dir: Path) -> dict[int, tuple[int, str]]:
    """pid -> (rank, start time) of every rank process the training script recorded in ``pid_dir``."""
    ranks = {}
    for path in pid_dir.glob("rank*-*"):
        pid, start_time = path.read_text().split()
        ranks[int(pid)] = (int(path.name[4:].split("-")[0]), start_time)
    return ranks


@dataclass
class Finished:
    """A finished command: exit code, combined output, when it ended, and what it left running."""

    command: list[str]
    returncode: int
    output: str
    started: float
    ended: float  # time.time() when the command exited and none of its processes was left
    session: int
    leftovers: list[int] = field(default_factory=list)

    def describe(self) -> str:
        return f"command {self.command} exited with {self.returncode}; output:\n{self.output[-6000:]}"


def _alive_processes(session: int, pid_dir: Path | None) -> list[int]:
    alive = set(session_processes(session))
    if pid_dir is not None:
        alive.update(pid for pid, (_, start) in recorded_ranks(pid_dir).items() if is_alive(pid, start))
    return sorted(alive)


def _abort_and_kill(proc: subprocess.Popen[bytes], pid_dir: Path | None) -> None:
    """Make every stuck process print its Python stack (faulthandler on SIGABRT), then kill them all."""
    targets = _alive_processes(proc.pid, pid_dir)
    for pid in targets:
        try:
            os.kill(pid, signal.SIGABRT)
        except OSError:
            pass
    time.sleep(2)
    for pid in [*_alive_processes(proc.pid, pid_dir), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    proc.wait()


def run_command(
    command: list[str],
    cwd: Path,
    *,
    timeout: float = 240,
    pid_dir: Path | None = None,
    settle: float = 0.0,
    env: dict[str, str] | None = None,
) -> Finished:
    """Run ``command`` in a new session until it exits; fail the test (after killing everything) past ``timeout``.

    ``ended`` is the first moment, polled every 20 ms, at which the command has exited and no process of its
    session nor any rank recorded in ``pid_dir`` runs any more; the poll gives up ``settle`` seconds after the
    command's exit, and whatever still runs then is reported in ``leftovers`` (and killed).
    """
    log_path = cwd / f"output-{time.monotonic_ns()}.log"
    started = time.time()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=command_environment() if env is None else env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _abort_and_kill(proc, pid_dir)
        output = log_path.read_text(errors="replace")
        pytest.fail(f"{command} did not finish within {timeout}s (every process was killed); output:\n{output[-8000:]}")
    exited = time.time()
    leftovers = _alive_processes(proc.pid, pid_dir)
    while leftovers and time.time() < exited + settle:
        time.sleep(0.02)
        leftovers = _alive_processes(proc.pid, pid_dir)
    ended = time.time()
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return Finished(
        command=command,
        returncode=proc.returncode,
        output=log_path.read_text(errors="replace"),
        started=started,
        ended=ended,
        session=proc.pid,
        leftovers=leftovers,
    )


def train_command(mode: str, *args: str, fabric_run: list[str] | None = None) -> list[str]:
    """The command that starts ``scripts/train.py`` with ``python`` or, with ``fabric_run`` options, ``fabric run``."""
    script = [str(TRAIN_SCRIPT), "--mode", mode, *args]
    if fabric_run is None:
        return [sys.executable, *script]
    # `--` keeps the script's own options (--strategy, ...) away from `fabric run`
    return [sys.executable, "-m", "fabric_core.cli", "run", *fabric_run, "--", *script]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory for a run's files, with ``pids/`` for the ranks' records."""
    (tmp_path / "pids").mkdir()
    return tmp_path


@pytest.fixture(scope="session")
def helpers() -> object:
    """This module: test modules reach the helpers above through this fixture (there is no package to import)."""
    return sys.modules[__name__]
