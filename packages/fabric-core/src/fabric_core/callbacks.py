"""Callbacks: collecting them (including those third-party packages publish through entry points) and calling hooks.

A package adds callbacks to every ``Fabric`` by declaring an entry point in the group ``fabric.callbacks``::

    [project.entry-points."fabric.callbacks"]
    my_callbacks = "my_package.callbacks:make_callbacks"

The entry point loads to a callable (a class or a function) that takes no arguments and returns a callback or a
list of callbacks. A callback of a type the user already passed to ``Fabric(callbacks=...)`` is not added again:
the user's own instance wins. Set ``FABRIC_DISABLE_ENTRY_POINT_CALLBACKS=1`` to ignore the group entirely.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import entry_points
from numbers import Number
from typing import Any

from fabric_utils import rank_zero_warn

log = logging.getLogger(__name__)

CALLBACKS_GROUP = "fabric.callbacks"
DISABLE_ENV = "FABRIC_DISABLE_ENTRY_POINT_CALLBACKS"


def entry_point_callbacks(group: str = CALLBACKS_GROUP) -> list[Any]:
    """Instantiate the callbacks every installed package publishes in ``group``."""
    if os.environ.get(DISABLE_ENV) == "1":
        return []
    found: list[Any] = []
    for entry_point in entry_points(group=group):
        try:
            factory = entry_point.load()
            made = factory()
        except Exception as err:  # a broken plugin must not break every run
            rank_zero_warn(
                f"Could not load the callbacks of entry point {entry_point.name!r} ({entry_point.value}): {err}"
            )
            continue
        found.extend(made if isinstance(made, (list, tuple)) else [made])
    return found


def collect_callbacks(user_callbacks: Any) -> list[Any]:
    """The user's callbacks (one object or a list) followed by entry-point callbacks of other types."""
    if user_callbacks is None:
        callbacks: list[Any] = []
    elif isinstance(user_callbacks, (list, tuple)):
        callbacks = list(user_callbacks)
        for index, callback in enumerate(callbacks):
            check_callback(f"callbacks[{index}]", callback)
    else:
        callbacks = [check_callback("callbacks", user_callbacks)]
    user_types = {type(c) for c in callbacks}
    callbacks.extend(c for c in entry_point_callbacks() if type(c) not in user_types)
    return callbacks


#: values that are data, never a callback: passing one is a mistake that would otherwise be ignored silently
_NOT_CALLBACKS = (str, bytes, bytearray, Number, Mapping, set, frozenset, list, tuple, Iterator)


def check_callback(where: str, callback: Any) -> Any:
    """``callback`` when it can be a callback (any object whose methods are hooks); else a ``TypeError`` naming it."""
    if isinstance(callback, type):
        raise TypeError(
            f"{where}={callback.__name__} is a class: pass an instance, e.g. callbacks=[{callback.__name__}()]."
        )
    if callback is None or isinstance(callback, _NOT_CALLBACKS):
        raise TypeError(
            f"{where}={callback!r} ({type(callback).__name__}) is not a callback. Pass a callback object (any object"
            " whose methods are the hooks that fabric.call runs, e.g. on_train_start) or a list or tuple of them."
        )
    return callback


class HookCaller:
    """Calls a hook on every callback that has it, passing only the keyword arguments each hook accepts."""

    def __init__(self) -> None:
        self._accepted: dict[Any, frozenset[str] | None] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"_accepted": {}}  # a cache: local functions in it would not pickle (e.g. for spawned processes)

    def accepted_keywords(self, hook: Callable[..., Any]) -> frozenset[str] | None:
        """The keyword names ``hook`` accepts, or None when it takes ``**kwargs`` (or cannot be inspected)."""
        key = getattr(hook, "__func__", hook)
        try:
            return self._accepted[key]
        except (KeyError, TypeError):
            pass
        try:
            parameters = inspect.signature(hook).parameters.values()
        except (TypeError, ValueError):
            accepted = None
        else:
            if any(p.kind is p.VAR_KEYWORD for p in parameters):
                accepted = None
            else:
                accepted = frozenset(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        try:
            self._accepted[key] = accepted
        except TypeError:  # unhashable callable
            pass
        return accepted

    def call(self, callbacks: list[Any], hook_name: str, *args: Any, **kwargs: Any) -> None:
        if not isinstance(hook_name, str) or not hook_name.isidentifier():
            raise (ValueError if isinstance(hook_name, str) else TypeError)(
                f"fabric.call(hook_name=...) takes the name of a callback method such as 'on_train_epoch_end', "
                f"got {hook_name!r}" + ("" if isinstance(hook_name, str) else f" of type {type(hook_name).__name__}")
            )
        for callback in callbacks:
            hook = getattr(callback, hook_name, None)
            if hook is None:
                continue
            if not callable(hook):
                rank_zero_warn(f"Skipping {type(callback).__name__}.{hook_name}: it is not callable.")
                continue
            accepted = self.accepted_keywords(hook)
            if accepted is None:
                hook(*args, **kwargs)
            else:
                hook(*args, **{k: v for k, v in kwargs.items() if k in accepted})
