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
    SharedStaging,
    lower_thread_priority,
    runs_in_writer,
    save_sharded_checkpoint,
    shared_writer,
    writer_process_enabled,
)
from fabric_strategies.base import Strategy
from fabric_strategies.checkpoint import StateFilter, to_checkpoint
from fabric_strategies.parallel import ParallelStrategy
from fabric_strategies.process_group import start_store_server
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
        self.shared: tuple[SharedStaging, SharedStaging] | None = None  # the same, in shared memory (writer process)
        self.writer_group: tuple[Any, ...] | None = None  # (address, port, rank, world size, timeout) of the writers
        self.writer_store: dist.TCPStore | None = None  # global rank 0: the store of the writers' group
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

    def in_background(self, checkpoint: Any, state: Mapping[str, Any], path: PathLike, write: _Call) -> BackgroundSave:
        """``function(copy, *args, **kwargs)`` (``write``) in a worker, ``copy`` being a CPU copy of ``checkpoint`` as
        it is now: its parameters and optimizer states (those of ``state``'s modules and optimizers) copied by the
        worker first, under a guard that makes training's changes to them wait for that copy
        (``fabric_io.DeferredCopy``), the rest now. The worker hands the write to the writer process where it can
        (``in_process``)."""
        from fabric_io import DeferredCopy, trained_storages  # imported by the first asynchronous save

        stagings = self.shared_stagings() if self.in_process(write) else None
        eager, late = stagings or (self.staging, self.late_staging)
        deferred, copy = DeferredCopy.start(checkpoint, trained_storages(state), eager, late)
        group = self.writer_group if stagings is not None else None
        try:
            save = BackgroundSave(
                _stage_then_write, deferred, copy, write, stagings, group, path=os.fspath(path), lower_priority=False
            )
        except BaseException:
            if deferred is not None:
                deferred.staged.set()  # no worker: nothing will copy, nothing must wait
                deferred.release()
            raise
        self.deferred = deferred
        return save

    def in_process(self, write: _Call) -> bool:
        """Whether ``write`` runs in the writer process: it is enabled and can run ``write`` (``runs_in_writer``: a
        ``CheckpointIO`` defined in the training script or holding a lock, or an ``AsyncCheckpointIO``, is written
        by the worker thread)."""
        _, args, _ = write
        if not writer_process_enabled() or any(isinstance(arg, AsyncCheckpointIO) for arg in args):
            return False
        return runs_in_writer(write)

    def shared_stagings(self) -> tuple[SharedStaging, SharedStaging]:
        if self.shared is None:
            self.shared = (SharedStaging(), SharedStaging())
        return self.shared

    def join_writers(self, strategy: ParallelStrategy) -> None:
        """Give this process's writer the address of the writers' process group (collective the first time, over the
        checkpoint group: global rank 0 hosts the group's store); the worker makes the writer join it."""
        if self.writer_group is not None or not (dist.is_available() and dist.is_initialized()):
            return
        group = self.checkpoint_group(strategy)
        address = os.environ.get("MASTER_ADDR", "127.0.0.1")
        if strategy.global_rank == 0:
            self.writer_store = start_store_server(address, timeout=strategy.timeout)
        found = [(address, self.writer_store.port) if self.writer_store is not None else None]
        dist.broadcast_object_list(found, src=0, group=group)
        address, port = found[0]
        self.writer_group = (address, port, strategy.global_rank, strategy.world_size, strategy.timeout)

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
_Call = tuple[Callable[..., object], tuple[Any, ...], dict[str, Any]]  # the write: function(copy, *args, **kwargs)


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
    return saver.in_background(checkpoint, state, path, (_save_through, (checkpoint_io, path), {}))


def _stage_then_write(
    deferred: DeferredCopy | None,
    copy: Any,
    write: _Call,
    stagings: tuple[SharedStaging, SharedStaging] | None,
    group: tuple[Any, ...] | None,
) -> None:
    """The worker: copy what was deferred (at the caller's priority: training's next optimizer step may be waiting
    for it), then write: in the writer process, fed from ``stagings``, or here at the lower priority of background
    writes."""
    if deferred is not None:
        copy = deferred.stage()
    function, args, kwargs = write
    if stagings is None:
        lower_thread_priority()
        function(copy, *args, **kwargs)
        return
    writer = shared_writer()
    if group is not None:
        writer.join_group(*group)
    writer.run(function, copy, *args, stagings=stagings, **kwargs)


def _save_through(
    copy: Any, checkpoint_io: CheckpointIO, path: PathLike, write: Callable[..., object] | None = None
) -> None:
    """``write(checkpoint_io, copy, path)`` (default: ``checkpoint_io.save_checkpoint(copy, path)``); with an
    ``AsyncCheckpointIO`` (a background save of its own), also wait for that to finish."""
    if write is None:
        checkpoint_io.save_checkpoint(copy, path)
    else:
        write(checkpoint_io, copy, path)
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
        write_full = (_save_through, (strategy.checkpoint_io, path, write_file), {})
        return saver.in_background(checkpoint, state, path, write_full)
    write: _Call = (save_sharded_checkpoint, (), {"path": path})  # the writers' own group
    if saver.in_process(write):
        saver.join_writers(strategy)
    else:
        write = (save_sharded_checkpoint, (), {"path": path, "process_group": saver.checkpoint_group(strategy)})
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
        for staging in (saver.staging, saver.late_staging, *(saver.shared or ())):
            staging.close()
