"""Saving checkpoints in the background: ``save_state(..., asynchronous=True)`` and the waits that keep it safe.

An asynchronous save writes a CPU copy of the state as it was when ``save`` was called (``fabric_io.CpuStaging``,
whose buffers the next save of the same tensors reuses). Before ``save`` returns, it copies all but the parameters
and optimizer states of the state's modules and optimizers; the worker thread copies those first
(``fabric_io.DeferredCopy``), while a guard on the training thread makes the next optimizer step, and any other
in-place torch call that writes to them, wait for that copy (``AsyncSave.waited`` counts the wait). Forward and
backward run alongside. The worker (``fabric_io.BackgroundSave``) then writes the copy through the same atomic
paths as a synchronous save: a single file goes
through the strategy's ``CheckpointIO`` (temporary file, then one rename), a sharded directory through
``fabric_io.save_sharded_checkpoint`` (hidden staging directory, published once complete). A save that fails or is
cut off leaves the previous checkpoint as it was.

At most one save runs per strategy: the next save, synchronous or not, and every load first wait for the pending
one (``wait_for_saves``, collective), and raise its error on every process. At interpreter exit the pending save is
finished (the worker thread is not a daemon, so Python waits for it before the exit handlers run) and an error it
raised is printed, since no call is left to raise it.

The worker of a sharded save runs ``torch.distributed.checkpoint``'s collectives while training runs its own; they
use a process group of their own (gloo, created by the first asynchronous sharded save), so that the two threads'
collectives never pair up with each other across processes.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch.distributed as dist

from fabric_io import (
    AsyncCheckpointIO,
    BackgroundSave,
    CheckpointIO,
    CpuStaging,
    lower_thread_priority,
    save_sharded_checkpoint,
)
from fabric_strategies.base import Strategy
from fabric_strategies.checkpoint import StateFilter, to_checkpoint
from fabric_strategies.parallel import ParallelStrategy
from fabric_strategies.teardown import call_at_exit
from fabric_utils import PathLike

if TYPE_CHECKING:
    from fabric_io import DeferredCopy
    from fabric_strategies.fsdp.base import ShardedStrategy


class AsyncSave:
    """The handle of one save started by ``save_state(..., asynchronous=True)`` (``fabric.save`` returns it).

    ``wait()`` blocks until the save is complete and raises its error; like the save, it is collective: every process
    calls it. The next save or load waits anyway, so calling it is needed only to be sure a checkpoint is on disk
    (e.g. before another program reads it).
    """

    def __init__(self, saver: _Saver, number: int, path: PathLike, deferred: DeferredCopy | None = None) -> None:
        self._saver = saver
        self._number = number
        self._deferred = deferred
        self.path = os.fspath(path)

    @property
    def waited(self) -> float:
        """Seconds this process's training has waited so far for the copy of this save's parameters and optimizer
        states (0.0 where everything was copied before ``save`` returned); see checkpoints.md."""
        return self._deferred.waited if self._deferred is not None else 0.0

    def done(self) -> bool:
        """Whether this process has finished its part of the save; never blocks, never raises."""
        return self._saver.number_pending != self._number or self._saver.locally_done()

    def wait(self) -> None:
        """Wait until the save is complete on every process; raise its error (on every process) if it failed."""
        strategy = self._saver.strategy()
        if self._saver.number_pending == self._number and strategy is not None:
            self._saver.finish(strategy)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.path!r}, done={self.done()})"


def save_state(
    strategy: Strategy,
    path: PathLike,
    state: Mapping[str, Any],
    *,
    filter: StateFilter | None = None,
    asynchronous: bool = False,
) -> AsyncSave | None:
    """Save ``state`` to ``path`` with ``strategy``, after the pending asynchronous save (if any) has finished.

    ``asynchronous=False``: the strategy's ``save_checkpoint``, which returns once every process may read the
    checkpoint (a parallel strategy's barrier); returns None. ``True``: returns
    once the state is copied, with a handle whose ``wait()`` waits for the write. Collective, as every save.
    """
    if not isinstance(asynchronous, bool):
        raise TypeError(f"asynchronous must be True or False, got {asynchronous!r}")
    write = _background_writer(strategy) if asynchronous else None
    wait_for_saves(strategy)
    if write is None:
        strategy.save_checkpoint(path, state, filter=filter)  # it returns once every process may read the result
        return None
    saver = _SAVERS.get(strategy)
    if saver is None:
        saver = _SAVERS[strategy] = _Saver(strategy)
    saver.start(write(strategy, saver, path, state, filter), path)
    return AsyncSave(saver, saver.number_pending or 0, path, saver.deferred)


def wait_for_saves(strategy: Strategy) -> None:
    """Wait for the pending asynchronous save of ``strategy`` (if any) and raise its error on every process.

    Collective once an asynchronous save was started (every process calls it); a no-op otherwise.
    """
    saver = _SAVERS.get(strategy)
    if saver is not None:
        saver.finish(strategy)


class _Saver:
    """The asynchronous saves of one strategy: the pending one, and the process group of sharded saves."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = weakref.ref(strategy)
        self.pending: BackgroundSave | None = None  # None on processes that write nothing (ranks > 0, one file)
        self.number_pending: int | None = None  # the number of the save not waited for yet, on every process
        self.path_pending = ""
        self.started = 0
        self.group: dist.ProcessGroup | None = None
        # their buffers are reused by the next save, which starts after this one ended
        self.staging = CpuStaging()  # what is copied before `save` returns
        self.late_staging = CpuStaging()  # parameters and optimizer states, copied by the worker (fabric_io.deferred)
        self.deferred: DeferredCopy | None = None
        call_at_exit(_finish_at_exit, weakref.ref(self))

    def start(self, pending: BackgroundSave | None, path: PathLike) -> None:
        self.started += 1
        self.pending, self.number_pending, self.path_pending = pending, self.started, os.fspath(path)

    def locally_done(self) -> bool:
        return self.pending is None or self.pending.done()

    def finish(self, strategy: Strategy) -> None:
        if self.number_pending is None:
            return
        pending, self.pending, self.number_pending = self.pending, None, None
        error: BaseException | None = None
        try:
            if pending is not None:
                pending.wait()
        except BaseException as err:
            error = err
        finally:
            self.release()
        # one file is written by rank 0 alone: the others learn here that it failed
        failed = strategy.reduce_boolean_decision(error is not None, all=False)
        if error is not None:
            raise error
        if failed:
            raise RuntimeError(
                f"The asynchronous save of {self.path_pending!r} failed on another"
                " process (its error is raised there); the previous checkpoint at that path is unchanged."
            )

    def release(self) -> None:
        """Remove the guard of the pending save's deferred copy (once that copy is complete; training thread)."""
        deferred, self.deferred = self.deferred, None
        if deferred is not None:
            deferred.release()

    def in_background(
        self, checkpoint: Any, state: Mapping[str, Any], path: PathLike, write: Callable[[Any], object]
    ) -> BackgroundSave:
        """``write(copy)`` in a worker, ``copy`` being a CPU copy of ``checkpoint`` as it is now: its parameters and
        optimizer states (those of ``state``'s modules and optimizers) copied by the worker first, under a guard
        that makes training's changes to them wait for that copy (``fabric_io.DeferredCopy``), the rest now."""
        from fabric_io import DeferredCopy, trained_storages  # imported by the first asynchronous save

        deferred, copy = DeferredCopy.start(checkpoint, trained_storages(state), self.staging, self.late_staging)
        if deferred is None:
            return BackgroundSave(write, copy, path=os.fspath(path))
        try:
            save = BackgroundSave(_stage_then_write, deferred, write, path=os.fspath(path), lower_priority=False)
        except BaseException:
            deferred.staged.set()  # no worker: nothing will copy, nothing must wait
            deferred.release()
            raise
        self.deferred = deferred
        return save

    def checkpoint_group(self, strategy: ParallelStrategy) -> dist.ProcessGroup | None:
        """The gloo group of the background collectives (collective when it is created), None without a group."""
        if not (dist.is_available() and dist.is_initialized()):
            return None
        if self.group is not None:
            try:
                dist.get_process_group_ranks(self.group)
                return self.group
            except (KeyError, ValueError, RuntimeError):  # destroyed with the process group it belonged to
                self.group = None
        self.group = dist.new_group(backend="gloo", timeout=strategy.timeout)
        return self.group


_SAVERS: weakref.WeakKeyDictionary[Strategy, _Saver] = weakref.WeakKeyDictionary()
_Writer = Callable[..., "BackgroundSave | None"]


def _background_writer(strategy: Strategy) -> _Writer:
    """How ``strategy`` saves in the background; raises for a strategy that saves its own way (DeepSpeed, XLA)."""
    save = type(strategy).save_checkpoint
    if save is Strategy.save_checkpoint:
        return _write_file
    # a parallel strategy saves through ParallelStrategy's skeleton; what it writes is its `_write_checkpoint`
    write = getattr(type(strategy), "_write_checkpoint", None)
    if save is ParallelStrategy.save_checkpoint and write is ParallelStrategy._write_checkpoint:
        return _write_file
    if save is ParallelStrategy.save_checkpoint and "fabric_strategies.fsdp" in sys.modules:
        from fabric_strategies.fsdp.base import ShardedStrategy

        if write is ShardedStrategy._write_checkpoint:
            return _write_sharded
    raise ValueError(
        f"{type(strategy).__name__} does not support asynchronous saves: it writes checkpoints its own way. Use"
        " asynchronous=False, or one of the strategies that support it: single device, DDP, DP, FSDP and"
        " ModelParallel."
    )


def _write_file(
    strategy: Strategy, saver: _Saver, path: PathLike, state: Mapping[str, Any], filter: StateFilter | None
) -> BackgroundSave | None:
    """One file written by global rank 0, from a CPU copy of the checkpoint (every process builds its state)."""
    checkpoint = to_checkpoint(strategy, state, filter)
    if not strategy.is_global_zero:
        return None
    checkpoint_io = strategy.checkpoint_io

    def write(copy: Any) -> None:
        _save_file(checkpoint_io, checkpoint_io.save_checkpoint, copy, path)

    return saver.in_background(checkpoint, state, path, write)


def _stage_then_write(deferred: DeferredCopy, write: Callable[[Any], object]) -> None:
    """The worker of a save whose copy was deferred: copy (at the caller's priority: training's next optimizer step
    may be waiting for it), then write at the lower priority of background writes."""
    copy = deferred.stage()
    lower_thread_priority()
    write(copy)


def _save_file(checkpoint_io: CheckpointIO, write: Callable[..., object], *args: Any) -> None:
    """``write(*args)``, which saves through ``checkpoint_io``; with an ``AsyncCheckpointIO`` (a background save of
    its own), also wait for that to finish."""
    write(*args)
    if isinstance(checkpoint_io, AsyncCheckpointIO):
        checkpoint_io.wait()


def _write_sharded(
    strategy: ShardedStrategy, saver: _Saver, path: PathLike, state: Mapping[str, Any], filter: StateFilter | None
) -> BackgroundSave | None:
    """A sharded directory written by every process (or, with ``state_dict_type="full"``, one file by rank 0)."""
    from fabric_strategies.fsdp.checkpoint import to_sharded_checkpoint, write_file

    checkpoint, full = to_sharded_checkpoint(strategy, path, state, filter)
    if full:
        if not strategy.is_global_zero:
            return None

        def write_full(copy: Any) -> None:
            _save_file(strategy.checkpoint_io, write_file, strategy, copy, path)

        return saver.in_background(checkpoint, state, path, write_full)
    group = saver.checkpoint_group(strategy)
    write = functools.partial(save_sharded_checkpoint, path=path, process_group=group)
    return saver.in_background(checkpoint, state, path, write)


def _finish_at_exit(saver_ref: weakref.ref[_Saver]) -> None:
    """Exit callback: collect the pending save's outcome on this process (no collective: the peers may be gone)."""
    saver = saver_ref()
    if saver is None:
        return
    pending, saver.pending, saver.number_pending = saver.pending, None, None
    saver.group = None
    try:
        if pending is not None:
            pending.wait()
    except BaseException as err:
        print(
            f"fabric: the asynchronous save of {os.fspath(saver.path_pending)!r} failed; the previous checkpoint at"
            " that path is unchanged:",
            file=sys.stderr,
        )
        traceback.print_exception(err, file=sys.stderr)
    finally:
        saver.release()
        saver.staging.close()
        saver.late_staging.close()
