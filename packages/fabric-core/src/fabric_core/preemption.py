"""Preemption: the signal a scheduler sends before it stops a job becomes ``fabric.preempted`` in every process."""

from __future__ import annotations

import logging
import signal
import threading
import warnings
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any, Union

import torch

from fabric_strategies import Strategy
from fabric_utils import FabricWarning

log = logging.getLogger(__name__)

SignalLike = Union[int, str, signal.Signals]
_Handler = Union[Callable[[int, Union[FrameType, None]], Any], int, None]
#: examples shown when a signal is not understood
_COMMON_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGTERM", "SIGINT", "SIGHUP", "SIGCONT")


def parse_signal(value: object) -> signal.Signals:
    """A signal a process can catch, from its number, its ``signal.Signals`` member or its name (``"SIGTERM"``,
    ``"usr1"``, as Slurm's ``--signal`` writes it). Anything else raises, naming the value and the choices."""
    found: signal.Signals | None = None
    if isinstance(value, str):
        name = value.strip().upper()
        found = getattr(signal.Signals, name if name.startswith("SIG") else f"SIG{name}", None)
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            found = signal.Signals(value)
        except ValueError:
            found = None
    if found is None or found in (signal.SIGKILL, signal.SIGSTOP):
        problem = "cannot be caught" if found is not None else "is not a signal"
        raise ValueError(
            f"Preemption signal {value!r} {problem}. Choose a signal by name, e.g. {', '.join(_COMMON_SIGNALS)}, by"
            " number or as a signal.Signals member."
        )
    return found


def check_every_value(check_every: object) -> int:
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every={check_every!r} is invalid: it must be an int >= 1")
    return check_every


class Preemption:
    """Handlers that note a preemption signal, and the check that turns every process's note into one answer.

    A handler only records the signal: it runs between two bytecodes of the main thread, possibly inside a
    collective, where saving a checkpoint would mismatch the processes' collectives. :meth:`check` then agrees with
    an all-reduce (every ``check_every``-th call), so every process sees the preemption at the same step. Once
    agreed, the answer stays True.
    """

    def __init__(self) -> None:
        self.check_every = 1
        self._requested: list[signal.Signals] = []
        self._previous: dict[signal.Signals, _Handler] = {}
        self._received: signal.Signals | None = None
        self._checks = 0
        self._agreed = False

    @property
    def signals(self) -> tuple[signal.Signals, ...]:
        """The signals whose handler is installed now."""
        return tuple(self._previous)

    @property
    def received(self) -> signal.Signals | None:
        """The first watched signal that reached this process, or ``None``."""
        return self._received

    def request(self, signals: Iterable[SignalLike], check_every: int, *, install: bool) -> None:
        """Watch ``signals`` too (checked first; installed now with ``install``, else by :meth:`start`)."""
        parsed = [parse_signal(s) for s in signals]
        self.check_every = check_every_value(check_every)
        self._requested += [s for s in parsed if s not in self._requested]
        if install:
            self._install(self._requested, strict=True)

    def start(self, defaults: Iterable[SignalLike]) -> None:
        """Install the handlers of the requested signals and of ``defaults`` (those the cluster environment sends)."""
        self._install([*self._requested, *(parse_signal(s) for s in defaults)], strict=bool(self._requested))

    def stop(self) -> None:
        """Put back the handlers that were there before, where ours is still the one installed."""
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def check(self, strategy: Strategy) -> bool:
        """Whether any process received a watched signal; a collective every ``check_every``-th call."""
        if self._agreed:
            return True
        self._checks += 1
        if self._checks % self.check_every:
            return False
        preempted = self._received is not None
        if strategy.world_size > 1:
            flag = torch.tensor(int(preempted), device=strategy.root_device)
            preempted = bool(strategy.all_reduce(flag, reduce_op="max").item())
        self._agreed = preempted
        return preempted

    def _install(self, signals: Iterable[signal.Signals], *, strict: bool) -> None:
        missing = [s for s in dict.fromkeys(signals) if s not in self._previous]
        if not missing:
            return
        if threading.current_thread() is not threading.main_thread():
            names = ", ".join(s.name for s in missing)
            message = f"Cannot watch {names} for preemption outside the main thread, where Python runs signal handlers."
            if strict:
                raise RuntimeError(f"{message} Call fabric.launch() and watch_preemption() from the main thread.")
            warnings.warn(message + " fabric.preempted will not see them.", FabricWarning, stacklevel=3)
            return
        for signum in missing:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._received is None:
            self._received = signal.Signals(signum)
            log.info("Received %s: fabric.preempted becomes True at its next check", self._received.name)
        previous = self._previous.get(signal.Signals(signum))
        if callable(previous) and previous is not signal.default_int_handler:  # that one raises KeyboardInterrupt
            previous(signum, frame)

    def __getstate__(self) -> dict[str, Any]:
        # handlers belong to one process: a spawned process installs its own in launch()
        return {**self.__dict__, "_previous": {}, "_received": None, "_checks": 0, "_agreed": False}
