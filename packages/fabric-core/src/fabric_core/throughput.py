"""Throughput: batches, samples, items (tokens) and FLOPs per second over a sliding window of updates, and MFU.

``Throughput`` is plain arithmetic over what you tell it; ``ThroughputMonitor`` takes the world size and the peak
FLOPs from a ``Fabric`` and logs through ``fabric.log_dict``::

    monitor = ThroughputMonitor(fabric, window_size=50)
    flops_per_batch = measure_flops(meta_model, lambda: meta_model(meta_batch), lambda y: y.sum())
    for step, batch in enumerate(loader):
        ...
        monitor.update(batches=step + 1, samples=(step + 1) * batch_size, flops=flops_per_batch)
        if step % 10 == 0:
            monitor.compute_and_log(step=step)
"""

from __future__ import annotations

import time as _time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from fabric_core.flops import get_available_flops, precision_dtype

if TYPE_CHECKING:
    from fabric_core.fabric import Fabric


class Throughput:
    """Rates over the last ``window_size`` calls of :meth:`update`.

    Each update reports this process's progress: ``batches``, ``samples`` and ``lengths`` (items, e.g. tokens) are
    running totals since the start, ``flops`` the FLOPs this device did since the previous update. ``time`` is the
    elapsed time in seconds; when it is not given, ``clock()`` is read (seconds since construction or :meth:`reset`).

    :meth:`compute` returns the latest totals (``time``, ``batches``, ``samples``, ``lengths``) and, from the second
    update in the window on, per-device rates under ``device{separator}...`` (``batches_per_sec``,
    ``samples_per_sec``, ``items_per_sec``, ``flops_per_sec`` and, when ``available_flops`` is known, ``mfu``: the
    fraction of the device's peak FLOP/s used) plus the same rates for the whole job without the prefix: the
    per-device rate times ``world_size`` (every process is assumed to work at the same pace).

    Args:
        available_flops: peak FLOP/s of one device (see ``get_available_flops``); None leaves MFU out.
        world_size: number of processes working in parallel.
        window_size: how many recent updates the rates use (at least 2).
        separator: joins the ``device`` prefix and the metric names.
        clock: seconds as a float; read when ``update`` gets no ``time``.
    """

    def __init__(
        self,
        *,
        available_flops: float | None = None,
        world_size: int = 1,
        window_size: int = 100,
        separator: str = "/",
        clock: Callable[[], float] = _time.perf_counter,
    ) -> None:
        if available_flops is not None and (isinstance(available_flops, bool) or not available_flops > 0):
            raise ValueError(f"available_flops must be a positive number of FLOP/s or None, got {available_flops!r}")
        _check_count("world_size", world_size, minimum=1)
        _check_count("window_size", window_size, minimum=2)
        if not isinstance(separator, str):
            raise TypeError(f"separator must be a str, got {type(separator).__name__}: {separator!r}")
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds, got {type(clock).__name__}")
        self.available_flops = float(available_flops) if available_flops is not None else None
        self.world_size = world_size
        self.window_size = window_size
        self.separator = separator
        self._clock = clock
        self._time: deque[float] = deque(maxlen=window_size)
        self._batches: deque[int] = deque(maxlen=window_size)
        self._samples: deque[int] = deque(maxlen=window_size)
        self._lengths: deque[int] = deque(maxlen=window_size)
        self._flops: deque[float] = deque(maxlen=window_size)
        self._start = clock()

    def reset(self) -> None:
        """Forget every update; the clock's zero moves to now."""
        for window in (self._time, self._batches, self._samples, self._lengths, self._flops):
            window.clear()
        self._start = self._clock()

    def update(
        self,
        *,
        batches: int,
        samples: int,
        lengths: int | None = None,
        flops: float | None = None,
        time: float | None = None,
    ) -> None:
        """Record progress: running totals of ``batches``, ``samples`` and ``lengths``, the ``flops`` done since the
        previous update, at ``time`` seconds (default: the clock). Give ``lengths`` and ``flops`` on every update of
        a window or on none."""
        now = self._clock() - self._start if time is None else float(time)
        self._check_update(now, batches, samples, lengths, flops)
        self._time.append(now)
        self._batches.append(batches)
        self._samples.append(samples)
        if lengths is not None:
            self._lengths.append(lengths)
        if flops is not None:
            self._flops.append(float(flops))

    def compute(self) -> dict[str, float]:
        """The latest totals and the rates over the window (see the class docstring); empty before any update."""
        if not self._time:
            return {}
        metrics: dict[str, float] = {
            "time": self._time[-1],
            "batches": self._batches[-1],
            "samples": self._samples[-1],
        }
        if self._lengths:
            metrics["lengths"] = self._lengths[-1]
        if len(self._time) < 2:
            return metrics
        elapsed = self._time[-1] - self._time[0]
        per_device = {
            "batches_per_sec": (self._batches[-1] - self._batches[0]) / elapsed,
            "samples_per_sec": (self._samples[-1] - self._samples[0]) / elapsed,
        }
        if self._lengths:
            per_device["items_per_sec"] = (self._lengths[-1] - self._lengths[0]) / elapsed
        if self._flops:
            # the first entry's FLOPs were done before the window's first time stamp
            per_device["flops_per_sec"] = (sum(self._flops) - self._flops[0]) / elapsed
        for name, value in per_device.items():
            metrics[f"device{self.separator}{name}"] = value
            metrics[name] = value * self.world_size
        if self._flops and self.available_flops is not None:
            metrics[f"device{self.separator}mfu"] = per_device["flops_per_sec"] / self.available_flops
        return metrics

    def _check_update(self, now: float, batches: int, samples: int, lengths: int | None, flops: float | None) -> None:
        _check_count("batches", batches, minimum=0)
        _check_count("samples", samples, minimum=batches, minimum_name="batches")
        if lengths is not None:
            _check_count("lengths", lengths, minimum=samples, minimum_name="samples")
        if flops is not None and (isinstance(flops, bool) or not isinstance(flops, (int, float)) or flops < 0):
            raise ValueError(f"flops must be a number >= 0 (the FLOPs since the previous update), got {flops!r}")
        if not self._time:
            return
        if now <= self._time[-1]:
            raise ValueError(f"time must increase from one update to the next: got {now} after {self._time[-1]}")
        if batches < self._batches[-1] or samples < self._samples[-1]:
            raise ValueError(
                f"batches and samples are running totals and cannot go down: got batches={batches},"
                f" samples={samples} after batches={self._batches[-1]}, samples={self._samples[-1]}"
            )
        for name, value, window in (("lengths", lengths, self._lengths), ("flops", flops, self._flops)):
            if (value is None) != (not window):
                raise ValueError(
                    f"`{name}` was given to some updates of the window and not to others; give it to every update"
                    " or to none (call reset() to change)."
                )
        if lengths is not None and lengths < self._lengths[-1]:
            raise ValueError(f"lengths is a running total and cannot go down: got {lengths} after {self._lengths[-1]}")


class ThroughputMonitor(Throughput):
    """A :class:`Throughput` for a ``Fabric`` run: its world size, the peak FLOPs of its device in its precision's
    dtype (``available_flops`` overrides them; on CPUs there are none unless you give them), and
    :meth:`compute_and_log`, which logs the metrics through ``fabric.log_dict``.

    Every process may update and compute; the loggers write on global rank zero only.
    """

    def __init__(
        self,
        fabric: Fabric,
        *,
        available_flops: float | None = None,
        window_size: int = 100,
        separator: str = "/",
        clock: Callable[[], float] = _time.perf_counter,
    ) -> None:
        if available_flops is None:
            dtype = precision_dtype(fabric.strategy.precision)
            available_flops = get_available_flops(fabric.device, dtype) if dtype is not None else None
        super().__init__(
            available_flops=available_flops,
            world_size=fabric.world_size,
            window_size=window_size,
            separator=separator,
            clock=clock,
        )
        self._fabric = fabric
        self.step = -1

    def compute_and_log(self, step: int | None = None, **extra: float) -> dict[str, float]:
        """Compute the metrics, add ``extra`` ones, log them at ``step`` (default: one more than the previous call's
        step) and return them."""
        self.step = self.step + 1 if step is None else step
        metrics = self.compute()
        metrics.update(extra)
        self._fabric.log_dict(metrics, step=self.step)
        return metrics

    @override
    def reset(self) -> None:
        super().reset()
        self.step = -1


def _check_count(name: str, value: Any, *, minimum: int, minimum_name: str | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    if value < minimum:
        bound = f"{minimum_name} ({minimum})" if minimum_name else str(minimum)
        raise ValueError(f"{name} must be >= {bound}, got {value}")
