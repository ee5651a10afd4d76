"""MultiprocessingLauncher when a rank fails: the first failure is named, the others are stopped, nothing hangs.

Real spawned processes with a real gloo group: one rank dies or raises while the other waits in a barrier (or sleeps
outside any collective). Every launch must end well within ``BOUND`` seconds (a hang check, not a benchmark: the
launcher's own budget is a second of settling plus a few seconds between SIGTERM and SIGKILL) and leave no child.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from fabric_strategies import DDPStrategy, MultiprocessingLauncher, ProcessFailedError
from fabric_strategies.launchers.process_control import is_exiting
from fabric_testing import child_pids

BOUND = 30.0
HOLD = 3 * BOUND  # how long the grandchild below keeps a dead rank's sentinel pipe open
CPU2 = [torch.device("cpu")] * 2


def _strategy() -> DDPStrategy:
    # the collective timeout is far above BOUND: only the launcher can end a rank stuck in the barrier in time
    strategy = DDPStrategy(parallel_devices=CPU2, start_method="spawn", timeout=timedelta(seconds=120))
    strategy.complete()
    return strategy


def _launch(launcher: MultiprocessingLauncher, *args: object) -> tuple[BaseException, float]:
    started = time.monotonic()
    with pytest.raises(BaseException) as info:
        launcher.launch(*args)
    elapsed = time.monotonic() - started
    assert elapsed < BOUND, f"the launch took {elapsed:.1f}s"
    assert not child_pids(), "a launched process was left running"
    return info.value, elapsed


def _pipe_write_ends() -> list[int]:
    """This process's file descriptors that are the writing end of a pipe (its sentinel pipe is one of them)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
            with open(f"/proc/self/fdinfo/{name}") as f:
                flags = next(int(line.split()[1], 8) for line in f if line.startswith("flags:"))
        except (OSError, StopIteration):
            continue
        if target.startswith("pipe:") and flags & os.O_ACCMODE == os.O_WRONLY:
            found.append(int(name))
    return found


def _kill_self(strategy: DDPStrategy, rank: int, pid_file: str | None) -> None:
    strategy.setup_environment()
    if strategy.global_rank == rank:
        if pid_file is not None:
            # a grandchild holds this process's sentinel pipe open after this process died (not its sockets): the
            # launcher gets the peer's "connection reset" report long before the sentinel shows the death
            holder = subprocess.Popen(["sleep", str(HOLD)], pass_fds=_pipe_write_ends())
            Path(pid_file).write_text(str(holder.pid))
        os.kill(os.getpid(), signal.SIGKILL)
    strategy.barrier()  # waits for the dead rank: gloo fails with a "connection reset/closed by peer" error


@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_killed_while_the_other_waits_in_a_barrier_is_named(rank):
    strategy = _strategy()
    err, _ = _launch(strategy.launcher, _kill_self, strategy, rank, None)
    assert isinstance(err, ProcessFailedError), repr(err)
    assert err.local_rank == rank
    assert f"local rank {rank} failed: it was killed by SIGKILL" in str(err)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_rank_whose_sentinel_closes_late_is_still_named_first(tmp_path):
    pid_file = tmp_path / "holder.pid"
    strategy = _strategy()
    try:
        err, _ = _launch(strategy.launcher, _kill_self, strategy, 1, str(pid_file))
        assert isinstance(err, ProcessFailedError), repr(err)
        assert err.local_rank == 1
        assert "killed by SIGKILL" in str(err)
        # it did not wait for the sentinel: the holder, which keeps it open, is still running
        assert not is_exiting(int(pid_file.read_text())), "the launcher waited for the dead rank's sentinel to close"
    finally:
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _raise_or_sleep(strategy: DDPStrategy, ignore_sigterm: bool) -> None:
    strategy.setup_environment()
    if strategy.global_rank == 1:
        raise ValueError("boom on rank 1")
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(600)  # outside any collective: it never notices the failure, the launcher must stop it


@pytest.mark.parametrize("ignore_sigterm", [False, True], ids=["sigterm", "needs-sigkill"])
def test_a_rank_that_never_notices_the_failure_is_stopped(ignore_sigterm):
    strategy = _strategy()
    err, _ = _launch(strategy.launcher, _raise_or_sleep, strategy, ignore_sigterm)
    assert isinstance(err, ValueError)
    assert "boom on rank 1" in str(err)
    notes = "\n".join(getattr(err, "__notes__", []))
    assert "local rank 1, the first to fail" in notes
    assert "local rank 0 was stopped by the launcher" in notes


def _finish_then_linger() -> int:
    # a non-daemon thread keeps the interpreter from exiting after the function returned
    threading.Thread(target=time.sleep, args=(600,), daemon=False).start()
    return 5


def test_a_process_that_does_not_exit_after_its_work_is_stopped():
    strategy = DDPStrategy(parallel_devices=[torch.device("cpu")], start_method="spawn")
    strategy.complete()
    launcher = MultiprocessingLauncher(strategy, "spawn", join_timeout=1.0)
    err, _ = _launch(launcher, _finish_then_linger)
    assert isinstance(err, ProcessFailedError)
    assert err.local_rank == 0
    assert "did not exit within 1.0s after finishing its work" in str(err)
