"""Copying a state to CPU without holding training up: the large tensors are copied later, by the worker thread.

An asynchronous save must write the state as it was when ``save`` was called, yet copying 100 MB on the caller's
thread holds training up for about a fifth of a synchronous save. ``DeferredCopy`` splits the copy: ``start``
(caller's thread) copies everything except the parameters and optimizer states (small: buffers, counters,
plain objects, which change anywhere, e.g. BatchNorm statistics in ``forward``), and ``stage`` (worker thread)
copies the parameters and optimizer states, which training changes only in place, through torch functions.

Until ``stage`` has finished, a guard on the caller's thread makes every change of those tensors wait for it:

- the next optimizer step waits first (a global ``Optimizer.step`` pre-hook, which also removes the guard);
- any other in-place torch call on the caller's thread that writes to one of them (``p.mul_()``, ``p.data.copy_``,
  ``torch._foreach_add_``, ``out=``, ``p[0] = ...``) waits too (a ``TorchFunctionMode``, on the caller's thread
  only, active until the next optimizer step or the next wait for the save).

Nothing else waits: forward and backward run alongside the copy. Changes that no torch call on the caller's thread
makes (another thread, collectives such as ``dist.all_reduce``, code that bypasses torch functions) are not
guarded: call ``wait_staged`` (``AsyncSave.wait``) before them. Where a guard cannot be installed (another torch
function mode is active, e.g. ``with torch.device(...)``), everything is copied at once instead.
"""

from __future__ import annotations

import copy as copy_module
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.overrides import TorchFunctionMode

from fabric_io.background import CpuStaging

# in-place operators whose Python names do not end with a single underscore
_INPLACE_DUNDERS = frozenset(
    f"__i{op}__"
    for op in (
        "add",
        "sub",
        "mul",
        "truediv",
        "floordiv",
        "mod",
        "pow",
        "and",
        "or",
        "xor",
        "lshift",
        "rshift",
        "matmul",
    )
) | {"__setitem__"}


def storage_key(tensor: torch.Tensor) -> int | None:
    """The address of the memory that ``tensor`` (a DTensor: its local shard) lives in; None where it has none."""
    local = getattr(tensor, "_local_tensor", tensor)
    try:
        address = local.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    return address or None


def trained_storages(state: Any) -> set[int]:
    """The memory of the parameters of every module, and the state of every optimizer, found in ``state`` (nested
    in dicts, lists and tuples): what an optimizer step changes in place."""
    keys: set[int] = set()
    for obj in _objects(state):
        if isinstance(obj, torch.nn.Module):
            tensors: Iterable[Any] = obj.parameters()
        elif isinstance(obj, torch.optim.Optimizer):
            tensors = (value for values in obj.state.values() for value in values.values())
        else:
            continue
        keys.update(key for key in map(_key_of, tensors) if key is not None)
    return keys


def _key_of(value: Any) -> int | None:
    return storage_key(value) if isinstance(value, torch.Tensor) else None


def _objects(state: Any) -> Iterable[Any]:
    if isinstance(state, Mapping):
        for value in state.values():
            yield from _objects(value)
    elif isinstance(state, (list, tuple)):
        for value in state:
            yield from _objects(value)
    else:
        yield state


class DeferredCopy:
    """A CPU copy of a checkpoint taken in two parts (see the module docstring); ``start`` creates it.

    ``stage()`` (once, in the worker) returns the complete copy; ``wait_staged()`` blocks until it has returned or
    failed; ``release()`` (caller's thread) removes the guard once the copy is complete.
    """

    def __init__(self, late: dict[str, torch.Tensor], skeleton: Any, staging: CpuStaging) -> None:
        self._late: dict[str, torch.Tensor] | None = late
        self._skeleton = skeleton
        self._staging = staging
        self._keys = {key for key in map(storage_key, late.values()) if key is not None}
        self.staged = threading.Event()
        self.waited = 0.0  # seconds the caller's thread has waited for the copy, in the guard or `release`
        self._hook: Any = None

    @classmethod
    def start(
        cls, checkpoint: Any, trained: set[int], eager: CpuStaging, late: CpuStaging
    ) -> tuple[DeferredCopy | None, Any]:
        """Copy ``checkpoint`` except its tensors in ``trained`` (storage keys) now; returns ``(deferred, copy)``.

        ``deferred`` is None when everything was copied now (nothing to defer, or no guard possible); then ``copy``
        is the complete copy. Otherwise ``copy`` is None and ``deferred.stage()`` returns it.
        """
        _drop_inert_guards()
        if not trained or torch._C._len_torch_function_stack() != 0:
            return None, eager.copy(checkpoint)
        deferred_tensors: dict[str, torch.Tensor] = {}
        now: dict[str, Any] = {}
        skeleton = _split(checkpoint, trained, deferred_tensors, now, "")
        if not deferred_tensors:
            return None, eager.copy(checkpoint)
        # the skeleton's containers are new already: only the objects in `now` are copied (one staging call)
        skeleton = _fill(skeleton, eager.copy(now)) if now else skeleton
        copy = cls(deferred_tensors, skeleton, late)
        copy._guard()
        return copy, None

    def stage(self) -> Any:
        try:
            late, self._late = self._late, None
            if late is None:
                raise RuntimeError("DeferredCopy.stage() runs once")
            return _fill(self._skeleton, self._staging.copy(late))
        finally:
            self._skeleton = None
            self.staged.set()

    def wait_staged(self) -> None:
        """Block until ``stage`` has returned or failed (counted in ``waited``)."""
        if not self.staged.is_set():
            start = time.perf_counter()
            self.staged.wait()
            self.waited += time.perf_counter() - start

    def touches(self, values: Iterable[Any]) -> bool:
        """Whether a tensor in ``values`` (or in a list or tuple there) shares memory with a deferred tensor."""
        keys = self._keys
        for value in values:
            if isinstance(value, torch.Tensor):
                if storage_key(value) in keys:
                    return True
            elif isinstance(value, (list, tuple)) and any(
                isinstance(item, torch.Tensor) and storage_key(item) in keys for item in value
            ):
                return True
        return False

    def _guard(self) -> None:
        _WaitBeforeChanges(self).__enter__()  # taken off by `_drop_inert_guards` once the copy is complete
        self._hook = register_optimizer_step_pre_hook(self._before_step)

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.wait_staged()
        _drop_inert_guards()

    def release(self) -> None:
        """Wait for the copy and remove the guard (caller's thread; a no-op once done)."""
        self.wait_staged()
        _drop_inert_guards()
        hook, self._hook = self._hook, None
        if hook is not None:
            hook.remove()


class _WaitBeforeChanges(TorchFunctionMode):
    """Before a torch call that writes to a tensor still to be copied, wait until the copy is complete."""

    def __init__(self, copy: DeferredCopy) -> None:
        super().__init__()
        self._copy = copy

    def inert(self) -> bool:
        return self._copy.staged.is_set()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        copy = self._copy
        if not copy.staged.is_set() and _writes(func, kwargs) and (copy.touches(args) or copy.touches(kwargs.values())):
            copy.wait_staged()
        return func(*args, **kwargs)


def _drop_inert_guards() -> None:
    """Pop the guards of complete copies off the top of the calling thread's torch function mode stack. One below
    another mode (entered after the save) stays, inert (it passes calls through), until a later ``start`` or
    ``release`` finds it on top: popping it from below would break that mode's own exit."""
    while depth := torch._C._len_torch_function_stack():
        mode = torch._C._get_function_stack_at(depth - 1)
        if not (isinstance(mode, _WaitBeforeChanges) and mode.inert()):
            return
        mode.__exit__(None, None, None)


def _writes(func: Any, kwargs: Mapping[str, Any]) -> bool:
    name = getattr(func, "__name__", "")
    return (name.endswith("_") and not name.endswith("__")) or name in _INPLACE_DUNDERS or "out" in kwargs


class _Slot:
    """Where a tensor (or another object to copy with ``CpuStaging``) goes in the copy."""

    def __init__(self, key: str) -> None:
        self.key = key


# immutable objects that the copy may share with the state
_ATOMS = (int, float, complex, str, bytes, type(None), torch.dtype, torch.device, torch.Size)


def _split(obj: Any, trained: set[int], late: dict[str, Any], now: dict[str, Any], where: str) -> Any:
    """A copy of ``obj``'s dicts, lists and tuples where each tensor in ``trained`` is replaced by a slot (named by
    its path) and put in ``late``, and each other object that is not immutable likewise put in ``now``."""
    kind = type(obj)
    if kind is dict or kind is OrderedDict:
        split = kind(
            (key, _split(value, trained, late, now, f"{where}.{key}" if where else str(key)))
            for key, value in obj.items()
        )
        if kind is OrderedDict and obj.__dict__:  # a state_dict's `_metadata`
            split.__dict__.update(copy_module.deepcopy(obj.__dict__))
        return split
    if kind is list or kind is tuple:
        return kind(_split(value, trained, late, now, f"{where}[{index}]") for index, value in enumerate(obj))
    if isinstance(obj, _ATOMS):
        return obj
    key = f"{where}#{len(late) + len(now)}"  # unique, even where two paths print alike
    if isinstance(obj, torch.Tensor) and storage_key(obj) in trained:
        late[key] = obj
    else:
        now[key] = obj
    return _Slot(key)


def _fill(obj: Any, copies: Mapping[str, Any]) -> Any:
    """``obj`` (made by ``_split``) with the slots named in ``copies`` replaced by their copies (others kept)."""
    if isinstance(obj, _Slot):
        return copies.get(obj.key, obj)
    kind = type(obj)
    if kind is dict or kind is OrderedDict:
        for key, value in obj.items():
            obj[key] = _fill(value, copies)
        return obj
    if kind is list:
        obj[:] = [_fill(value, copies) for value in obj]
        return obj
    if kind is tuple:
        return tuple(_fill(value, copies) for value in obj)
    return obj
