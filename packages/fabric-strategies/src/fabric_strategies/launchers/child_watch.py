"""Watching the children a ``SubprocessScriptLauncher`` started, and the failure reports they send back.

A child learns through ``FAILURE_FD_VARIABLE`` of a pipe to its parent. When an exception reaches the top of the
child, the child prints it as usual and then writes its local rank to that pipe, before its exit handlers run (those
leave the process group, which makes the other processes fail in their collectives with "Connection closed by
peer"). So when rank 0 itself fails, the pipe tells whether a child had raised first: its report was written before
rank 0's error could happen.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing import Pipe
from multiprocessing.connection import wait
from typing import Any

from typing_extensions import override

from fabric_strategies.launchers.process_control import (
    STOP_GRACE,
    describe_end,
    is_exiting,
    open_pidfd,
    stop_processes,
)

FAILURE_FD_VARIABLE = "FABRIC_LAUNCHER_FAILURE_FD"
REAP_TIMEOUT = 1.0  # a process that is exiting becomes reapable within milliseconds


def report_failures_to_parent(local_rank: int) -> None:
    """In a child: after an uncaught exception is printed, write ``local_rank`` to the parent's failure pipe.

    Does nothing unless the parent passed the pipe (``FAILURE_FD_VARIABLE``); the variable is removed so that the
    processes this one starts do not report in its name.
    """
    value = os.environ.pop(FAILURE_FD_VARIABLE, None)
    if value is None or not value.isdigit():
        return
    fd = int(value)
    original = sys.excepthook

    def hook(*exc_info: Any) -> None:
        original(*exc_info)
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        with contextlib.suppress(OSError):
            os.write(fd, f"{local_rank}\n".encode())

    sys.excepthook = hook


class ChildObserver(threading.Thread):
    """Waits for the children to end or report a failure; at the first failure it stops the others and calls
    ``on_failure(rank, code)`` (``code``: how the failing child ended; a child that raised gets a few seconds to exit
    by itself first).

    It sleeps until something happens: on Linux >= 5.3 it waits on the children's pidfds (and on the failure pipe
    ``reports``, a file descriptor, if given), elsewhere it also checks every ``poll_interval`` seconds. Whoever sees
    a failure first (this thread, or the launcher when its own process fails) ``claim``s the report, so a run
    reports one first failure.
    """

    def __init__(
        self,
        processes: dict[int, subprocess.Popen[bytes]],
        on_failure: Callable[[int, int], None],
        poll_interval: float = 0.1,
        *,
        reports: int | None = None,
    ) -> None:
        super().__init__(daemon=True, name="fabric-child-observer")
        self.processes = processes
        self.on_failure = on_failure
        self.poll_interval = poll_interval
        self.reports = reports
        self.raised: list[int] = []  # children that reported an uncaught exception, in order
        self.failure: tuple[int, int] | None = None
        self._stop_event = threading.Event()
        self._wake_reader, self._wake_writer = Pipe(duplex=False)
        self._lock = threading.Lock()
        self._claimed = False
        self._reports_open = reports is not None
        if reports is not None:
            os.set_blocking(reports, False)

    def claim(self) -> bool:
        """Whether the caller is the first to handle a failure of the run (then it reports it, nobody else does)."""
        with self._lock:
            claimed, self._claimed = self._claimed, True
        return not claimed

    def take_reports(self) -> list[int]:
        """Read the failure pipe (without blocking); return every child that reported an exception so far."""
        with self._lock:
            data = b""
            while self.reports is not None and self._reports_open:
                try:
                    chunk = os.read(self.reports, 4096)
                except (BlockingIOError, OSError):
                    break
                if not chunk:  # every child closed its end: nothing more will come
                    self._reports_open = False
                    break
                data += chunk
            for token in data.split():
                rank = int(token) if token.isdigit() else None
                if rank in self.processes and rank not in self.raised:
                    self.raised.append(rank)
            return list(self.raised)

    @override
    def run(self) -> None:
        pidfds = {rank: open_pidfd(proc.pid) for rank, proc in self.processes.items()}
        running = set(self.processes)
        try:
            while running and not self._stop_event.is_set():
                fds = [fd for rank, fd in pidfds.items() if rank in running and fd is not None]
                polling = any(pidfds[rank] is None for rank in running)
                reports = [self.reports] if self.reports is not None and self._reports_open else []
                wait([self._wake_reader, *reports, *fds], timeout=self.poll_interval if polling else None)
                raised = self.take_reports()
                silent = self._silent_deaths(running, raised)
                running -= {rank for rank in running if self.processes[rank].poll() is not None}
                failed = [*silent, *raised]
                if failed and not self._stop_event.is_set():
                    self._handle(failed[0])
                    return
        finally:
            self._wake_reader.close()
            for fd in pidfds.values():
                if fd is not None:
                    os.close(fd)

    def _silent_deaths(self, running: set[int], raised: list[int]) -> list[int]:
        """Children that ended badly without reporting an exception. A death usually makes the others fail ("connection
        reset by peer"), so when only such reports are seen, a child that is dying at this moment counts too."""
        dead = [rank for rank in sorted(running) if self.processes[rank].poll() not in (None, 0)]
        if raised and not dead:
            dying = [rank for rank in sorted(running) if is_exiting(self.processes[rank].pid)]
            for rank in dying:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.processes[rank].wait(REAP_TIMEOUT)
            dead = [rank for rank in dying if self.processes[rank].returncode not in (None, 0)]
        return [rank for rank in dead if rank not in raised]

    def _handle(self, rank: int) -> None:
        failing = self.processes[rank]
        if not self.claim():
            self.failure = (rank, failing.returncode if failing.returncode is not None else 1)
            return
        stop_processes([proc for other, proc in self.processes.items() if other != rank])
        with contextlib.suppress(subprocess.TimeoutExpired):
            failing.wait(STOP_GRACE)  # a child that raised is running its exit handlers
        stop_processes([failing])
        self.failure = (rank, int(failing.returncode))
        self.on_failure(*self.failure)

    def close(self) -> None:
        """Close the failure pipe once the watch has ended."""
        with self._lock:
            if self.reports is not None and not self.is_alive():
                os.close(self.reports)
                self.reports = None

    def stop(self) -> None:
        """End the watch (at once, also while the thread waits)."""
        self._stop_event.set()
        with self._lock:
            with contextlib.suppress(OSError):  # the watch has ended and closed its end already
                self._wake_writer.send_bytes(b"stop")
            self._wake_writer.close()


def write_report(message: str) -> None:
    """Write a launcher's report line to the real standard error (an exception hook may have swapped ``sys.stderr``)."""
    stream = sys.__stderr__ or sys.stderr
    for target in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            target.flush()
    with contextlib.suppress(OSError, ValueError, AttributeError):
        stream.write(f"\n[fabric] {message}\n")
        stream.flush()


def exit_after_child_failure(
    local_rank: int, code: int, *, raised: bool = False, after_main_ended: bool = False
) -> None:
    """Report a failed child and end this process at once with exit code 1 (it may be stuck in a collective).

    ``after_main_ended``: this process (local rank 0) had already left its script (a ``sys.exit`` or the script's end)
    while the child still ran; the child then usually fails in its next collective ("Connection closed by peer").
    """
    how = "raised an exception (its traceback is above)" if raised else describe_end(code)
    if after_main_ended:
        write_report(
            f"The process of local rank {local_rank} {how} after this process (local rank 0) had left the script"
            " (sys.exit or the script's end) while the others still needed it, e.g. in a collective. Every other"
            " process was stopped."
        )
    else:
        write_report(f"The process of local rank {local_rank} failed first: it {how}. Every other process was stopped.")
    os._exit(1)
