"""Naming the value that made a save fail to pickle: its key path in the state, e.g. ``state['extra']['fn']``.

Only called after a save failed, so the normal save path pays nothing for it.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from fabric_utils import PathLike

# What pickling raises for a value it cannot serialise: a lambda or local class (AttributeError "Can't pickle local
# object", or PicklingError), a lock, generator or open file (TypeError "cannot pickle ...")
PICKLING_ERRORS = (pickle.PicklingError, TypeError, AttributeError)


def unpicklable_error(path: PathLike, state: Any, err: BaseException) -> TypeError | None:
    """A ``TypeError`` that names the key path of the first value in ``state`` that cannot be pickled, when ``err``
    (raised while saving ``state`` to ``path``) is a pickling failure and such a value is found; None otherwise.

    Raise it ``from err``. Containers (dicts, lists, tuples) are searched by key and index; any other value is tried
    on its own with torch's pickle protocol (tensors' storages are not copied for that).
    """
    if not isinstance(err, PICKLING_ERRORS):
        return None
    found = _first_unpicklable(state, "state", set())
    if found is None:
        return None
    where, value, reason = found
    return TypeError(
        f"Cannot save {os.fspath(path)!r}: {where} cannot be pickled ({type(reason).__name__}: {reason}); it holds"
        f" {_describe(value)}. A checkpoint holds tensors, numbers, strings, containers of them and objects whose"
        " class can be imported by name: a lambda, a local function or class, a lock or an open file cannot be saved."
        f" Remove {where} from the state, or save the data it holds instead."
    )


def _first_unpicklable(value: Any, where: str, seen: set[int]) -> tuple[str, Any, BaseException] | None:
    if isinstance(value, torch.Tensor) or id(value) in seen:
        return None
    seen.add(id(value))
    for child_where, child in _children(value, where):
        found = _first_unpicklable(child, child_where, seen)
        if found is not None:
            return found
    if type(value) in (dict, list, tuple):
        return None  # a plain container pickles when its parts do (trying it again would re-try a part met before)
    # every part pickles alone (or there are none): the value itself, e.g. a local container class, is to blame
    try:
        _Probe(io.BytesIO(), protocol=torch.serialization.DEFAULT_PROTOCOL).dump(value)
    except Exception as reason:
        return where, value, reason
    return None


def _children(value: Any, where: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield f"{where}[{key!r}]", item
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield f"{where}[{index}]", item


def _describe(value: Any) -> str:
    kind = type(value)
    text = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    name = getattr(value, "__qualname__", None)
    return f"the {text} {name!r}" if isinstance(name, str) else f"a {text}"


class _Probe(pickle.Pickler):
    """A pickler that stands in for tensor storages, so that trying a value does not copy the tensors it holds."""

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, (torch.UntypedStorage, torch.storage.TypedStorage)):
            return "storage"
        return None
