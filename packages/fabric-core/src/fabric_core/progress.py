"""``fabric.progress(iterable)``: a progress bar for the user's own loop, shown by global rank zero only.

On a terminal the bar is a live tqdm bar (redrawn in place, nested bars stacked); when the output is not a terminal
(a CI log, a pipe, a file) it becomes plain lines, one every ``interval`` seconds and one when the loop ends, so logs
stay readable. Both show the iterations per second, the time left when the length is known, and the latest value
of every metric given to ``fabric.log``/``fabric.log_dict`` while the bar is open. Other ranks iterate silently.
"""

from __future__ import annotations

import math
import numbers
import sys
import time
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any, Generic, TypeVar

import torch

T = TypeVar("T")

# plain lines: the same fields as tqdm's bar, without the bar itself (and without carriage returns)
_PLAIN_FORMAT = "{desc}{percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_PLAIN_FORMAT_UNSIZED = "{desc}{n_fmt} [{elapsed}, {rate_fmt}{postfix}]"


class OpenBars(list):  # type: ignore[type-arg]
    """The progress bars open on this process, outermost first; ``Fabric.log_dict`` hands them the metrics.

    Empty (falsy) when no bar is open, so ``log_dict`` pays one truth test. Never pickled with its bars: a
    ``Fabric`` sent to spawned processes gets an empty list there.
    """

    def record(self, metrics: Mapping[str, Any]) -> None:
        for bar in self:
            bar.record(metrics)

    def __reduce__(self) -> tuple[type[OpenBars], tuple[()]]:
        return (type(self), ())


def check_progress_arguments(
    iterable: Any, desc: Any, total: Any, interval: Any, file: Any, disable: Any, metrics: Any
) -> None:
    """The arguments of ``fabric.progress``, checked on every rank (a mistake fails everywhere, not on rank 0 only)."""
    if not (hasattr(type(iterable), "__iter__") or hasattr(type(iterable), "__getitem__")):
        raise TypeError(
            "fabric.progress(iterable) needs something to loop over (a DataLoader, a range, a list, a generator...),"
            f" got {iterable!r} of type {type(iterable).__name__}"
        )
    if desc is not None and not isinstance(desc, str):
        raise TypeError(f"fabric.progress(desc={desc!r}) must be a str or None, got {type(desc).__name__}")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
        raise ValueError(f"fabric.progress(total={total!r}) must be an int >= 0 or None (None: len(iterable))")
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 < interval < math.inf:
        raise ValueError(f"fabric.progress(interval={interval!r}) must be a number of seconds > 0")
    if file is not None and not callable(getattr(file, "write", None)):
        raise TypeError(f"fabric.progress(file={file!r}) must be a text stream with a write method, or None (stderr)")
    if not isinstance(disable, bool):
        raise TypeError(f"fabric.progress(disable={disable!r}) must be a bool, got {type(disable).__name__}")
    if metrics is not None and (
        not isinstance(metrics, (list, tuple)) or not all(isinstance(name, str) for name in metrics)
    ):
        raise TypeError(
            f"fabric.progress(metrics={metrics!r}) must be a list or tuple of metric names (str), or None (all)"
        )


def format_metric(value: Any) -> str:
    """A short text for one metric value: numbers to 4 significant digits, one-element tensors as numbers."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, numbers.Integral):  # bools too
        return str(int(value))
    if isinstance(value, numbers.Real):
        return f"{float(value):.4g}"
    text = str(value)
    return text if len(text) <= 20 else text[:19] + "…"


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress(Generic[T]):
    """Iterate over ``iterable`` with a progress bar when ``show`` is true (global rank zero), silently otherwise.

    Made by :meth:`Fabric.progress`. ``desc`` names the bar; ``total`` is its length when ``len(iterable)`` does not
    work; ``interval`` is the number of seconds between plain lines; ``file`` the stream (stderr by default);
    ``metrics`` the names of the logged metrics to show (None: every one); ``disable`` hides the bar. The bar opens
    when the loop starts and closes when it ends, breaks or raises (also usable as ``with fabric.progress(...) as
    bar: for x in bar: ...``). ``len(bar)`` is the loop's length.
    """

    def __init__(
        self,
        iterable: Iterable[T],
        *,
        show: bool,
        open_bars: OpenBars,
        desc: str | None = None,
        total: int | None = None,
        interval: float = 10.0,
        file: IO[str] | None = None,
        disable: bool = False,
        metrics: Sequence[str] | None = None,
    ) -> None:
        check_progress_arguments(iterable, desc, total, interval, file, disable, metrics)
        self.iterable = iterable
        self.desc = desc
        self.total = total if total is not None else _length(iterable)
        self.interval = float(interval)
        self.show = show and not disable
        self._file = file
        self._names = None if metrics is None else frozenset(metrics)
        self._open_bars = open_bars
        self._latest: dict[str, Any] = {}
        self._changed = False
        self._bar: Any = None  # the tqdm bar on a terminal
        self._stream: IO[str] | None = None  # the stream of plain lines otherwise
        self._format_meter: Any = None  # tqdm's line formatter (kept: a bar closed at interpreter exit cannot import)
        self._n = 0
        self._start = 0.0
        self._last_line_n = 0
        self._last_line_time = 0.0

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError(f"this progress bar's iterable ({type(self.iterable).__name__}) has no len(); pass total=")
        return self.total

    def __iter__(self) -> Iterator[T]:
        if not self.show:
            return iter(self.iterable)
        return self._shown()

    def _shown(self) -> Generator[T, None, None]:
        self._open()
        try:
            for item in self.iterable:
                yield item
                self._advance()
        finally:  # also on break (the generator is closed) and on an exception in the loop body
            self.close()

    def __enter__(self) -> Progress[T]:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def record(self, metrics: Mapping[str, Any]) -> None:
        """Remember the latest value of each metric (called by ``fabric.log_dict`` while the bar is open)."""
        for name, value in metrics.items():
            if self._names is None or name in self._names:
                self._latest[name] = value.detach() if isinstance(value, torch.Tensor) else value
                self._changed = True

    def postfix(self) -> str:
        """The latest metrics as ``name=value`` pairs."""
        return ", ".join(f"{name}={format_metric(value)}" for name, value in self._latest.items())

    def _open(self) -> None:
        from tqdm import tqdm  # a light dependency, imported by rank zero only when a bar opens

        file = self._file if self._file is not None else sys.stderr
        self._format_meter = tqdm.format_meter
        self._n, self._start = 0, time.monotonic()
        self._last_line_n, self._last_line_time = 0, self._start
        self._latest, self._changed = {}, False
        if _is_terminal(file):
            # leave=None: the outermost bar stays on screen when done, nested ones are cleared
            self._bar = tqdm(total=self.total, desc=self.desc, file=file, leave=None, dynamic_ncols=True)
        else:
            self._stream = file
        self._open_bars.append(self)

    def _advance(self) -> None:
        self._n += 1
        now = time.monotonic()
        if self._bar is not None:
            if self._changed and now - self._last_line_time >= self._bar.mininterval:
                self._bar.set_postfix_str(self.postfix(), refresh=False)  # metrics read at the bar's refresh rate
                self._changed, self._last_line_time = False, now
            self._bar.update(1)
        elif now - self._last_line_time >= self.interval:
            self._write_line(now)

    def _write_line(self, now: float) -> None:
        assert self._stream is not None
        postfix = self.postfix()
        line = self._format_meter(
            self._n,
            self.total,
            now - self._start,
            prefix=f"{self.desc}: " if self.desc else "",
            postfix=postfix or None,
            bar_format=_PLAIN_FORMAT if self.total else _PLAIN_FORMAT_UNSIZED,
        )
        self._stream.write(line + "\n")
        self._stream.flush()
        self._last_line_n, self._last_line_time = self._n, now

    def close(self) -> None:
        """Finish the bar (a last plain line with the final counts); closing twice does nothing."""
        if self in self._open_bars:
            self._open_bars.remove(self)
        if self._bar is not None:
            if self._changed:
                self._bar.set_postfix_str(self.postfix(), refresh=False)
            self._bar.close()
            self._bar = None
        elif self._stream is not None:
            if self._n != self._last_line_n or self._n == 0:
                self._write_line(time.monotonic())
            self._stream = None


def _length(iterable: Any) -> int | None:
    try:
        return len(iterable)
    except TypeError:  # a generator, an iterable dataset...
        return None
