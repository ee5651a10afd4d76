"""Process helpers: describing exit codes, stopping processes, dying with the parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fabric_strategies.launchers.process_control import (
    describe_end,
    describe_exit_code,
    is_exiting,
    is_running,
    stop_processes,
)


def test_exit_codes_read_like_what_happened():
    assert describe_exit_code(0) == "exit code 0"
    assert describe_exit_code(-6) == "signal SIGABRT"
    assert describe_exit_code(-9) == "signal SIGKILL"
    assert describe_exit_code(None) == "still running"
    assert describe_end(-9) == "was killed by SIGKILL"
    assert describe_end(3) == "exited with exit code 3"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_is_exiting_tells_a_dead_unreaped_process_from_a_running_one():
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert not is_exiting(proc.pid)
        assert proc.stdin is not None
        proc.stdin.close()  # it ends now; nobody reaps it until proc.wait()
        deadline = time.monotonic() + 30
        while not is_exiting(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert is_exiting(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_stop_processes_terminates_then_kills_and_reaps():
    ignore_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True)"
    stubborn = subprocess.Popen(
        [sys.executable, "-c", ignore_term + "; time.sleep(600)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    assert stubborn.stdout is not None
    assert stubborn.stdout.readline().strip() == "ready"
    stop_processes([stubborn, polite], grace=1.0)
    assert polite.returncode == -signal.SIGTERM
    assert stubborn.returncode == -signal.SIGKILL
    assert not is_running(stubborn)
    assert not is_running(polite)
    stubborn.stdout.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_a_grandchild_dies_with_its_parent(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    parent_code = textwrap.dedent(
        f"""
        import os, subprocess, sys, time
        from fabric_strategies.launchers.process_control import parent_death_hook
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                 preexec_fn=parent_death_hook(os.getpid()))
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    try:
        deadline = time.monotonic() + 120
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        grandchild = int(pid_file.read_text())
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while _alive(grandchild) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(grandchild)
    finally:
        parent.kill()
        parent.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_is_running_reports_finished_processes():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not is_running(proc)
    assert os.getpid() > 0
