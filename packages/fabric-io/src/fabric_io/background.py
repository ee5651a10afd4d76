"""Saving in the background: a CPU copy of the state taken at once, then one worker thread that writes it."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

BACKGROUND_NICENESS = 10
"""How much lower than the caller's the CPU priority of a background writer is (Linux ``nice`` steps): on a busy
machine the writer takes the CPU time that training leaves, instead of an equal share of it."""


def stage_on_cpu(state: Any) -> Any:
    """A copy of ``state`` that nothing done to ``state`` afterwards reaches: tensors copied to CPU memory (DTensors
    as DTensors with CPU shards), containers and plain objects copied, tensors that share memory still sharing it.

    The copy is ``torch.distributed.checkpoint``'s own staging (the first step of its ``async_save``), run on the
    calling thread so that it is complete when this returns. Raises ``TypeError`` naming the type of an object that
    cannot be copied. ``CpuStaging`` does the same and keeps the memory for the next copy.
    """
    staging = CpuStaging()
    try:
        return staging.copy(state)
    finally:
        staging.close()


UNCOPYABLE = (TypeError, AttributeError, RuntimeError)
"""What copying an object that cannot be copied raises (``copy.deepcopy`` of a lock, a generator, ...)."""


def uncopyable_error(err: BaseException) -> TypeError:
    """The error of a staging copy that failed with ``err``: what to save instead."""
    return TypeError(
        f"Could not copy the state to save it in the background ({type(err).__name__}: {err}). An asynchronous"
        " save copies every object of the state before it returns; save objects that can be copied (tensors,"
        " containers, numbers, strings), or save synchronously."
    )


class CpuStaging:
    """Copies states to CPU memory like ``stage_on_cpu``, keeping that memory for the next copy of the same tensors.

    A training loop saves the same parameters and optimizer states again and again: the second copy reuses the
    buffers of the first (allocating fresh memory for 100 MB costs twice the copy itself, in page faults). So a copy
    is valid only until the next ``copy``: call it again only once what was made of the previous copy is done (e.g.
    written). ``close`` lets the memory go.
    """

    def __init__(self) -> None:
        self._stager: Any = None

    def copy(self, state: Any) -> Any:
        if self._stager is None:
            from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

            # no pinned or shared memory and no CUDA streams: a plain, synchronous copy that works on every machine
            options = StagingOptions(
                use_pinned_memory=False, use_shared_memory=False, use_async_staging=False, use_non_blocking_copy=False
            )
            self._stager = DefaultStager(options)
        try:
            return self._stager.stage(state)
        except UNCOPYABLE as err:
            raise uncopyable_error(err) from err

    def close(self) -> None:
        if self._stager is not None:
            self._stager.close()
            self._stager = None


class BackgroundSave:
    """Runs ``function(*args)`` once in a worker thread (started here) that writes a checkpoint to ``path``.

    ``wait`` joins the thread and raises what ``function`` raised, once, with a note naming ``path``. The thread is
    not a daemon: an interpreter that exits while it runs waits for it first, so a save in flight is finished, not
    cut off. On Linux it runs at a lower CPU priority (``BACKGROUND_NICENESS``); with ``lower_priority=False`` it
    starts at the caller's, and ``function`` lowers it (``lower_thread_priority``) when training no longer waits
    for it.
    """

    def __init__(self, function: Callable[..., object], *args: Any, path: str, lower_priority: bool = True) -> None:
        self.path = path
        self._error: BaseException | None = None
        self._lower_priority = lower_priority  # False: ``function`` calls ``lower_thread_priority`` itself, when due
        self._thread = threading.Thread(
            target=self._run, args=(function, args), name="fabric-async-checkpoint", daemon=False
        )
        self._thread.start()

    def done(self) -> bool:
        """Whether the save has finished (successfully or not); never blocks."""
        return not self._thread.is_alive()

    def wait(self) -> None:
        """Block until the save has finished; raise its error (only the first call raises it)."""
        self._thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self, function: Callable[..., object], args: tuple[Any, ...]) -> None:
        if self._lower_priority:
            lower_thread_priority()
        try:
            function(*args)
        except BaseException as err:  # handed to the thread that calls wait()
            if hasattr(err, "add_note"):
                err.add_note(f"(raised by the background save of {self.path!r})")
            self._error = err

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.path!r}, done={self.done()})"


def lower_thread_priority() -> None:
    """Lower the CPU priority of the calling thread by ``BACKGROUND_NICENESS`` (Linux applies ``setpriority`` of a
    thread id to that thread)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        thread_id = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread_id, os.getpriority(os.PRIO_PROCESS, thread_id) + BACKGROUND_NICENESS)
    except OSError:  # a sandbox that forbids it: the save still runs, at the caller's priority
        return
