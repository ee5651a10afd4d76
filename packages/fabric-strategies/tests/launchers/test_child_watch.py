"""SubprocessScriptLauncher when a rank fails: the first failure is named, the run ends in time, no child is left.

Real scripts: rank 0 is the script's process, rank 1 the script run again, joined in a real gloo group. One rank
dies or raises while the other waits in a barrier, whose timeout (120 s) is far above ``BOUND``: only the launcher
can end the run in time. ``BOUND`` is a hang check, not a benchmark.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fabric_strategies.launchers.child_watch import ChildObserver
from fabric_testing import child_pids

BOUND = 60.0  # two interpreters importing torch on a loaded machine, plus the launcher's few seconds

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from datetime import timedelta
    import torch
    from fabric_strategies import DDPStrategy

    mode, out_dir = sys.argv[1], sys.argv[2]
    strategy = DDPStrategy(
        parallel_devices=[torch.device("cpu")] * 2, start_method="popen", timeout=timedelta(seconds=120)
    )
    strategy.complete()

    def work():
        strategy.setup_environment()
        rank = strategy.global_rank
        with open(os.path.join(out_dir, f"rank{rank}.pid"), "w") as f:
            f.write(str(os.getpid()))
        if mode == "child_killed" and rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "child_raises" and rank == 1:
            raise ValueError("boom from rank 1")
        if mode == "parent_raises" and rank == 0:
            raise ValueError("boom from rank 0")
        if mode == "child_slow":
            strategy.barrier()
            if rank == 1:
                import time
                time.sleep(3)  # still working after rank 0 left its script: rank 0 waits for it and says so
            return
        strategy.barrier()  # the other rank never comes: its failure must end this one

    launcher = strategy.launcher  # None in rank 1: it was started by rank 0's launcher
    launcher.launch(work) if launcher is not None else work()
    """
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _run(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    drop = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_PORT", "GROUP_RANK", "LOCAL_WORLD_SIZE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script), mode, str(tmp_path)], capture_output=True, text=True, timeout=BOUND, env=env
    )
    assert time.monotonic() - started < BOUND
    child = int((tmp_path / "rank1.pid").read_text())
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "rank 1 was left running"
    return proc


@pytest.mark.parametrize(
    ("mode", "report"),
    [
        ("child_killed", "The process of local rank 1 failed first: it was killed by SIGKILL"),
        ("child_raises", "The process of local rank 1 failed first: it raised an exception"),
        ("parent_raises", "This process (local rank 0) failed first, with ValueError: boom from rank 0"),
    ],
)
def test_the_first_failure_is_reported_and_the_run_stops(tmp_path, mode, report):
    proc = _run(tmp_path, mode)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert report in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("[fabric]") == 1, proc.stderr[-3000:]  # one report: the first failure
    if mode != "child_killed":
        assert f"ValueError: boom from rank {int(mode.startswith('child'))}" in proc.stderr


def test_rank_0_says_that_it_waits_for_a_child_still_running_after_the_script_ended(tmp_path):
    proc = _run(tmp_path, "child_slow")
    assert proc.returncode == 0, proc.stderr[-3000:]
    notice = "This process (local rank 0) has left the script; waiting for local rank 1 to end (Ctrl+C"
    assert notice in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("[fabric]") == 1, proc.stderr[-3000:]


def test_a_child_that_reports_an_exception_is_acted_on_before_it_exits():
    reports, writer = os.pipe()
    code = "import os, sys, time; os.write(int(sys.argv[1]), b'1\\n'); time.sleep(600)"
    reporting = subprocess.Popen([sys.executable, "-c", code, str(writer)], pass_fds=(writer,))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    os.close(writer)
    reported: list[tuple[int, int]] = []
    observer = ChildObserver({1: reporting, 2: other}, lambda rank, c: reported.append((rank, c)), reports=reports)
    try:
        observer.start()
        observer.join(BOUND)
        assert not observer.is_alive()
        # it had a grace period to exit by itself (it raised: its exit handlers run), then it was stopped
        assert reported == [(1, -signal.SIGTERM)]
        assert observer.raised == [1]
        assert other.returncode == -signal.SIGTERM
        assert not child_pids() & {reporting.pid, other.pid}
    finally:
        for proc in (reporting, other):
            proc.kill()
            proc.wait()
        os.close(reports)


def test_stopping_the_observer_wakes_it_at_once():
    sleeping = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    observer = ChildObserver({1: sleeping}, lambda rank, code: None, poll_interval=600.0)
    try:
        observer.start()
        observer.stop()
        observer.join(10)
        assert not observer.is_alive()
        assert sleeping.poll() is None  # stopping the watch does not stop the children
    finally:
        sleeping.kill()
        sleeping.wait()
