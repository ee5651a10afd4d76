"""Tear a process group down so that no rank aborts when the interpreter exits.

With gloo, a ``DistributedDataParallel`` wrapper that is still alive when the interpreter shuts down keeps the
process group's C++ objects (through its reducer and logger) alive past ``destroy_process_group()``; they are then
destroyed during interpreter finalisation, and the process sometimes dies with SIGABRT ("terminate called without an
active exception"). Releasing the wrapper's references and collecting garbage *before* the group is destroyed lets the
C++ objects go away while the interpreter is still intact.
"""

from __future__ import annotations

import atexit
import gc
import weakref
from typing import Any

import torch.distributed as dist
from torch.nn import Module
from torch.nn.parallel import DistributedDataParallel

# DDP wrappers created by the strategies of this process, released before the process group is destroyed
_TRACKED_WRAPPERS: weakref.WeakSet[Module] = weakref.WeakSet()
# the attributes through which a DistributedDataParallel wrapper reaches the process group's C++ objects
_PROCESS_GROUP_ATTRIBUTES = ("logger", "reducer", "process_group", "_delay_grad_buffer", "_comm_hooks")
_exit_hook_registered = False


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
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


def _teardown_at_exit() -> None:
    if (dist.is_available() and dist.is_initialized()) or len(_TRACKED_WRAPPERS):
        destroy_process_group_cleanly()


def register_exit_teardown() -> None:
    """Make sure the process group is destroyed cleanly at interpreter exit even if nobody calls ``teardown()``."""
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_teardown_at_exit)
        _exit_hook_registered = True


def describe_references(obj: Any) -> list[str]:
    """Names of the attributes of ``obj`` that still reach a process group (for diagnostics and tests)."""
    return [name for name in _PROCESS_GROUP_ATTRIBUTES if name in vars(obj)]
