"""Watch the processes a ``MultiprocessingLauncher`` started: what each sent back, how each ended, who failed first.

A process sends one message through its pipe: ``("ok", payload)`` or ``("error", exception, traceback, time)``,
where ``time`` is ``time.monotonic()`` (one clock for every process of the machine) when it caught the error. A process
can also end without a message ("silently": SIGKILL, ``os._exit``, a crash). This process waits on the pipes and the
process sentinels together, so it wakes up at the first message or exit, never polling.

Which failure came first: when a process dies, its peers fail a moment later in a collective ("Connection reset by
peer") and report that error, sometimes before the dead process's sentinel shows its death (on a busy machine a
killed process can take a while to close its files). So after the first failure the watch goes on for a short while
(``SETTLE`` seconds, less when every process has ended), then judges: a silent death that was seen no later than
the exit of the process that reported the earliest error is the first failure (a reporting process only exits after
its report, and its exit is what makes a peer fail later); otherwise the earliest reported error is.
"""

from __future__ import annotations

import math
import pickle
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from fabric_strategies.launchers.process_control import describe_end, is_exiting, shorten, stop_processes

REAP_TIMEOUT = 5.0  # a process whose sentinel closed is exiting; reaping it takes milliseconds
SETTLE = 1.0  # how long to keep watching after the first failure, for the exits and reports that race with it


@dataclass
class RankState:
    """What this process knows about the process of one local rank."""

    rank: int
    process: Any  # a multiprocessing Process
    reader: Connection | None
    message: tuple[Any, ...] | None = None
    exited: bool = False
    ended_round: float = math.inf  # the round of waiting in which it was first seen dying or dead
    stopped: bool = False  # still running (not even dying) when the launcher stopped the run
    hung: bool = False  # finished its work but did not exit within the join timeout

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    @property
    def reported_error(self) -> bool:
        return self.message is not None and self.message[0] == "error"

    @property
    def error_time(self) -> float:
        return float(self.message[3]) if self.reported_error else math.inf  # type: ignore[index]

    @property
    def failed_silently(self) -> bool:
        """Ended by itself, without reporting an error, and not well (a signal, an exit code, or no result)."""
        if self.stopped or self.hung or not self.exited or self.reported_error:
            return False
        return self.exitcode != 0 or self.message is None

    @property
    def failed(self) -> bool:
        return self.reported_error or self.hung or self.failed_silently

    def read(self) -> None:
        """Take the message waiting in the pipe, if any; an empty, closed pipe is closed here."""
        reader = self.reader
        if reader is None or not reader.poll():
            return
        try:
            self.message = tuple(pickle.loads(reader.recv_bytes()))
        except (EOFError, OSError, ValueError, pickle.UnpicklingError):
            pass  # it ended without a message, or was stopped while sending one
        reader.close()
        self.reader = None

    def observe(self, ready: set[Any], round_: int) -> bool:
        """Update from the objects ``wait`` found ready in round ``round_``; whether it was seen exiting now."""
        sentinel_ready = self.process.sentinel in ready
        if sentinel_ready or (self.reader is not None and self.reader in ready):
            self.read()
        if not sentinel_ready or self.exited:
            return False
        self.exited = True
        self.ended_round = min(self.ended_round, round_)
        self.process.join(REAP_TIMEOUT)
        return True

    def waitables(self) -> list[Any]:
        found: list[Any] = [] if self.exited else [self.process.sentinel]
        return found if self.reader is None else [*found, self.reader]


def watch(states: list[RankState], join_timeout: float) -> RankState | None:
    """Wait until every process ended well (``None``), or one failed; stop the others then; return the first failure.

    Waits as long as a process is still working; once every process has sent its message, each must exit within
    ``join_timeout`` seconds, else it counts as failed (``hung``). Every process has ended when this returns.
    """
    exit_deadline: float | None = None
    settle_deadline: float | None = None
    round_ = 0
    while not all(state.exited for state in states):
        now = time.monotonic()
        if settle_deadline is None and any(state.failed for state in states):
            settle_deadline = now + SETTLE
        if exit_deadline is None and all(state.message is not None for state in states):
            exit_deadline = now + join_timeout
        deadline = min((d for d in (exit_deadline, settle_deadline) if d is not None), default=None)
        if deadline is not None and now >= deadline:
            if settle_deadline is None:  # the exit deadline passed with no other failure
                for state in states:
                    state.hung = not state.exited
            break
        timeout = None if deadline is None else deadline - now
        ready = set(wait([obj for state in states for obj in state.waitables()], timeout))
        round_ += 1
        if any([state.observe(ready, round_) for state in states]):
            _mark_dying(states, round_)
    _mark_dying(states, round_ + 1)
    stop_survivors(states)
    return judge(states)


def _mark_dying(states: list[RankState], round_: int) -> None:
    """A process just exited, or the watch ends: note which others are dying already (they may be slow to close)."""
    for state in states:
        if not state.exited and state.ended_round == math.inf and is_exiting(state.process.pid):
            state.ended_round = round_


def stop_survivors(states: list[RankState]) -> None:
    """Stop every process still running (SIGTERM, SIGKILL after a grace period) and read what they sent."""
    survivors = [state for state in states if not state.exited]
    stop_processes([state.process for state in survivors])
    for state in survivors:
        state.exited = True
        state.stopped = not state.hung and state.ended_round == math.inf  # not dying by itself already
    for state in states:
        state.read()


def judge(states: list[RankState]) -> RankState | None:
    """The first failure (see the module's doc), or ``None`` when every process ended well."""
    reported = sorted((s for s in states if s.reported_error), key=lambda s: (s.error_time, s.rank))
    silent = sorted((s for s in states if s.failed_silently), key=lambda s: (s.ended_round, s.rank))
    if silent and (not reported or silent[0].ended_round <= reported[0].ended_round):
        return silent[0]
    if reported:
        return reported[0]
    return next((state for state in states if state.hung), None)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return shorten(lines[-1].strip() if lines else "an error")


def describe_secondary(state: RankState) -> str | None:
    """One short line about a process that did not fail first (``None`` if it ended well)."""
    name = f"local rank {state.rank}"
    if state.reported_error:
        return f"{name} failed afterwards: {_last_line(state.message[2])}"  # type: ignore[index]
    if state.hung:
        return f"{name} did not exit after finishing its work and was stopped"
    if state.stopped:
        return f"{name} was stopped by the launcher"
    if state.exitcode != 0 or state.message is None:
        return f"{name} {describe_end(state.exitcode)} afterwards"
    return None


def describe_silent_failure(state: RankState, join_timeout: float) -> str:
    """Why a process that reported no error counts as failed."""
    if state.hung:
        return f"it did not exit within {join_timeout}s after finishing its work, so it was stopped."
    if state.message is not None:
        return f"it finished its work, then {describe_end(state.exitcode)}; see its output above."
    return f"it {describe_end(state.exitcode)} before returning a result (the first failure); see its output above."
