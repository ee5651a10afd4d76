"""Tear a process group down so that no rank aborts when the interpreter exits.

Why a plain ``destroy_process_group()`` is not enough with torch 2.13 + gloo: every ``backward()`` stashes a Python
object (a ``contextvars.Context``) in torch's thread-local state, and each gloo work item created during backward (the
gradient all-reduce of ``DistributedDataParallel``) captures that state. The gloo worker thread that ran the work frees
it shortly after marking it complete, and freeing the captured Python object needs the GIL. If the main thread reaches
interpreter finalisation first, the worker asks for the GIL after finalisation began, Python ends the thread in the
middle of a ``noexcept`` destructor, and the process dies with SIGABRT ("terminate called without an active
exception"). Once a ``DistributedDataParallel`` wrapper was built, the group's worker threads also outlive
``destroy_process_group()`` (idle) until the process ends, so they must have finished their work before it does.

``destroy_process_group_cleanly`` therefore drops what the DDP wrappers hold of the group, collects garbage, lets the
gloo workers finish dropping their finished work while the interpreter is intact, destroys the group and collects
again. ``tests/teardown_loop.py`` measures it (including with the workers deliberately starved of CPU).

Destroying the group must also close its connections, so that a peer blocked in a collective fails at once instead of
waiting for the collective timeout. That only happens when the last reference to the group goes away, and
``torch.distributed.nn.functional`` binds ``group.WORLD`` as the default argument of its functions when it is first
imported. Building a ``DistributedDataParallel`` wrapper imports it (through ``torch._dynamo``), so if that happens
while a group exists the group stays referenced from those defaults for the rest of the process. Importing it here,
before any strategy creates a group, binds ``None`` (meaning "the default group at call time") instead.

A script may end its process group itself (``torch.distributed.destroy_process_group()`` at its end, or in an
``atexit`` handler of its own), as scripts written for plain PyTorch do. So the exit teardown runs after the script's
``atexit`` handlers (``call_at_exit``), and copes with a group that the script destroyed: the DDP wrappers still hold
such a group, and releasing them destroys it then.
"""

from __future__ import annotations

import gc
import os
import time
import weakref
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
from torch.nn import Module
from torch.nn.parallel import DistributedDataParallel

if dist.is_available():
    # binds the default arguments of its functions to ``None`` while no process group exists (see the docstring)
    import torch.distributed.nn  # noqa: F401

# DDP wrappers created by the strategies of this process, released before the process group is destroyed
_TRACKED_WRAPPERS: weakref.WeakSet[Module] = weakref.WeakSet()
# the attributes through which a DistributedDataParallel wrapper reaches the process group's C++ objects
_PROCESS_GROUP_ATTRIBUTES = ("logger", "reducer", "process_group", "_delay_grad_buffer", "_comm_hooks")
_exit_hook_registered = False
# the name torch gives the worker threads of a gloo process group
_GLOO_WORKER_THREAD = "pt_gloo_runloop"


def track_ddp_wrapper(wrapper: Module) -> None:
    """Remember ``wrapper`` so that ``destroy_process_group_cleanly`` (and the exit hook) release it first."""
    _TRACKED_WRAPPERS.add(wrapper)
    register_exit_teardown()


def release_ddp_wrapper(wrapper: Module) -> None:
    """Drop what a ``DistributedDataParallel`` wrapper holds of the process group.

    Afterwards the wrapper no longer synchronises anything: its forward calls the wrapped module's forward directly,
    so evaluating a model after teardown still works on each process.
    """
    if not isinstance(wrapper, DistributedDataParallel):
        raise TypeError(f"Expected a DistributedDataParallel module, got {type(wrapper).__name__}")
    state = vars(wrapper)
    for name in _PROCESS_GROUP_ATTRIBUTES:
        state.pop(name, None)
    # ``Module.__call__`` looks ``forward`` up on the instance first: route it to the local module
    wrapper.forward = wrapper.module.forward  # type: ignore[method-assign]
    _TRACKED_WRAPPERS.discard(wrapper)


def release_tracked_wrappers() -> None:
    for wrapper in list(_TRACKED_WRAPPERS):
        release_ddp_wrapper(wrapper)


def _gloo_worker_states() -> list[str] | None:
    """The scheduler state ("R", "S", ...) of each gloo worker thread of this process; ``None`` without ``/proc``."""
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    states = []
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() != _GLOO_WORKER_THREAD:
                    continue
            with open(f"/proc/self/task/{tid}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        except (OSError, IndexError):
            continue
    return states


def wait_for_idle_gloo_workers(timeout: float = 2.0, interval: float = 0.002) -> bool:
    """Give gloo's worker threads the chance to drop the work they finished, while the interpreter can still run them.

    A worker that destroys a finished work item frees Python objects captured with it (during ``backward``), which
    needs the GIL; if that happens after interpreter finalisation began, the thread is killed mid-destructor and the
    process aborts. This sleeps (releasing the GIL) until every worker thread has been seen waiting for new work twice
    in a row, or ``timeout`` seconds passed. Returns whether the workers were seen idle.
    """
    deadline = time.monotonic() + timeout
    calm = 0
    while True:
        states = _gloo_worker_states()
        if states is not None and not states:
            return True  # no gloo process group in this process
        time.sleep(interval)
        states = _gloo_worker_states()
        if states is None:  # no /proc: a short pause is all we can do
            return True
        calm = calm + 1 if all(state == "S" for state in states) else 0
        if calm >= 2:
            return True
        if time.monotonic() > deadline:
            return False


def destroy_process_group_cleanly(*wrappers: Module) -> None:
    """Destroy the default process group (and every subgroup) without risking an abort at interpreter exit.

    Releases the given ``DistributedDataParallel`` wrappers and every wrapper a strategy of this process created,
    collects garbage, destroys the process group and collects again. Safe to call when no group exists and to call
    more than once.
    """
    for wrapper in wrappers:
        if isinstance(wrapper, DistributedDataParallel):
            release_ddp_wrapper(wrapper)
    release_tracked_wrappers()
    gc.collect()
    wait_for_idle_gloo_workers()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


def _teardown_at_exit() -> None:
    if (dist.is_available() and dist.is_initialized()) or len(_TRACKED_WRAPPERS):
        destroy_process_group_cleanly()


class _UntilExit:
    """The type of an object that lives until the interpreter exits: exit callbacks are its finalizers."""


_UNTIL_EXIT = _UntilExit()


def call_at_exit(function: Callable[..., object], *args: object) -> None:
    """Call ``function(*args)`` once when the interpreter exits, after the ``atexit`` handlers of the script.

    ``weakref.finalize`` calls its exit callbacks from one ``atexit`` handler that Python registers with the first
    finalizer, and ``import torch`` creates one: so every ``atexit`` handler registered after torch was imported (any
    handler that a script registers to leave its process group) runs before these callbacks. Callbacks registered here
    run while the interpreter is intact, the latest registered first.
    """
    weakref.finalize(_UNTIL_EXIT, function, *args)


def register_exit_teardown() -> None:
    """Make sure the process group is destroyed cleanly at interpreter exit even if nobody calls ``teardown()``."""
    global _exit_hook_registered
    if not _exit_hook_registered:
        call_at_exit(_teardown_at_exit)
        _exit_hook_registered = True


def describe_references(obj: Any) -> list[str]:
    """Names of the attributes of ``obj`` that still reach a process group (for diagnostics and tests)."""
    return [name for name in _PROCESS_GROUP_ATTRIBUTES if name in vars(obj)]
