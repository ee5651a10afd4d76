"""Helpers for the processes a launcher starts: die with the parent, stop cleanly, describe an exit code."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from typing import Any

_PR_SET_PDEATHSIG = 1


def parent_death_hook(parent_pid: int | None) -> Callable[[], None] | None:
    """A function that, run in a child process, makes the kernel SIGKILL it when its parent thread exits.

    Linux only (``None`` elsewhere). The C function is looked up here, in the parent, so the hook is safe to run
    between ``fork`` and ``exec`` (``subprocess.Popen(preexec_fn=...)``). If the child's parent is no longer
    ``parent_pid`` when the hook runs (the parent is already gone), the child kills itself right away; ``None`` skips
    that check (for children whose parent is an intermediary, such as multiprocessing's fork server).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if parent_pid is not None and os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def die_with_parent(parent_pid: int | None) -> None:
    """Make this process die when its parent does (see ``parent_death_hook``)."""
    hook = parent_death_hook(parent_pid)
    if hook is not None:
        hook()


def describe_exit_code(code: int | None) -> str:
    """``exit code 1`` or ``signal SIGABRT`` for a negative code (a process killed by a signal)."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def describe_end(code: int | None) -> str:
    """How a process ended, as a phrase: ``was killed by SIGKILL``, ``exited with exit code 1``."""
    if code is None:
        return "did not end"
    if code < 0:
        return f"was killed by {describe_exit_code(code).removeprefix('signal ')}"
    return f"exited with {describe_exit_code(code)}"


def shorten(line: str, limit: int = 200) -> str:
    """``line`` cut to ``limit`` characters (ending in "...") for a one-line report."""
    return line if len(line) <= limit else line[: limit - 3] + "..."


_PF_EXITING = 0x4  # task flag set once a process has begun to exit (include/linux/sched.h)


def is_exiting(pid: int) -> bool:
    """Whether process ``pid`` is ending or gone: a zombie, flagged as exiting, or not found (Linux ``/proc``).

    A process that was killed can take a moment to close its files (its sentinel pipe) on a busy machine; this tells
    that it is already dying. ``False`` where ``/proc`` is not available.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return sys.platform.startswith("linux")
    except (OSError, IndexError):
        return False
    return fields[0] in ("Z", "X") or bool(int(fields[6]) & _PF_EXITING)


def open_pidfd(pid: int) -> int | None:
    """A file descriptor that becomes readable when process ``pid`` ends (Linux >= 5.3), else ``None``.

    Waiting on it (``multiprocessing.connection.wait``, ``select``) wakes up at the exit itself, without polling.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        return int(pidfd_open(pid))
    except OSError:
        return None


def is_running(proc: Any) -> bool:
    """Whether a ``subprocess.Popen`` or ``multiprocessing.Process`` is still running."""
    if isinstance(proc, subprocess.Popen):
        return proc.poll() is None
    return bool(proc.is_alive())


STOP_GRACE = 3.0


def stop_processes(processes: Sequence[Any], grace: float = STOP_GRACE) -> None:
    """SIGTERM every process still running, wait up to ``grace`` seconds for them, then SIGKILL the rest.

    Accepts ``subprocess.Popen`` and ``multiprocessing.Process`` objects; every process is reaped afterwards.
    """
    running = [proc for proc in processes if is_running(proc)]
    for proc in running:
        try:
            proc.terminate()
        except OSError:
            continue
    deadline = time.monotonic() + grace
    for proc in running:
        if not _wait(proc, deadline - time.monotonic()):
            try:
                proc.kill()
            except OSError:
                continue
            _wait(proc, grace)


def _wait(proc: Any, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``proc`` to end and reap it; whether it ended."""
    timeout = max(0.0, timeout)
    pidfd = open_pidfd(proc.pid) if is_running(proc) else None
    if pidfd is not None:  # readable at the exit itself, also while a grandchild holds the sentinel pipe open
        try:
            wait([pidfd], timeout)
        finally:
            os.close(pidfd)
        return not is_running(proc)
    if isinstance(proc, subprocess.Popen):
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    proc.join(timeout)
    return proc.exitcode is not None
