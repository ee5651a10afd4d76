"""Run nox sessions in ``jobs`` lanes, each taking the next session from one queue.

Used by the ``ci`` session of noxfile.py. Each session runs as its own ``nox -s NAME`` process. With one lane and
nothing beside it, its output goes straight to ours; otherwise each session writes to a log file that is printed whole
when the session ends (so the CI log reads session by session, not interleaved). Either way a line with the session's
result, time and CPU time follows. Sessions are taken in the order given: put the longest first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Outcome:
    name: str
    returncode: int
    seconds: float
    cpu_seconds: float  # user + system time of the session's process and every descendant it waited for


def run_in_lanes(
    names: Sequence[str],
    *,
    jobs: int,
    noxfile: Path,
    env: Mapping[str, str] | None = None,
    beside: Sequence[str] = (),
) -> list[Outcome]:
    """Run every session in ``names`` with at most ``jobs`` at a time; return their outcomes in the order they ended.

    Each session in ``beside`` starts at once and runs alongside the lanes, not in one: for sessions that spend their
    time waiting (on a cluster's clock), which would otherwise hold a lane while its CPU idles.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    printing = threading.Lock()
    outcomes: list[Outcome] = []
    child_env = {**os.environ, **(env or {})}
    start = time.monotonic()

    def run_one(name: str) -> None:
        begun = time.monotonic()
        command = [sys.executable, "-m", "nox", "--noxfile", str(noxfile), "-s", name]
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
            # one lane: the session writes to our output as it goes; several: to a file, printed whole at its end
            output = None if jobs == 1 and not beside else log
            sys.stdout.flush()
            proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=child_env)
            _, status, usage = os.wait4(proc.pid, 0)  # wait() would not give the CPU time
            proc.returncode = code = os.waitstatus_to_exitcode(status)  # reaped: Popen must not wait for it again
            log.seek(0)
            outcome = Outcome(name, code, time.monotonic() - begun, usage.ru_utime + usage.ru_stime)
            with printing:
                sys.stdout.write(log.read())
                state = "passed" if code == 0 else f"FAILED (exit code {code})"
                since = time.monotonic() - start
                took = f"{outcome.seconds:.0f} s, {outcome.cpu_seconds:.0f} s of CPU"
                print(f"=== {name}: {state} in {took} ({since:.0f} s into the run) ===", flush=True)
                outcomes.append(outcome)

    with ThreadPoolExecutor(max_workers=max(1, len(beside))) as alongside, ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [alongside.submit(run_one, name) for name in beside]
        futures += [pool.submit(run_one, name) for name in names]
        for future in futures:
            future.result()
    return outcomes


def host_speed(steps: int = 10_000_000) -> float:
    """CPU seconds this process spends on a fixed pure-Python loop: the same work every run, so it shows how fast
    the host is at the time (a shared host's speed varies by a third from hour to hour, every session's with it)."""
    begun = time.process_time()
    total = 0
    for step in range(steps):
        total += step
    return time.process_time() - begun
