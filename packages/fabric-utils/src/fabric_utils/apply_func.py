"""Apply a function to every element of a given type inside nested collections."""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

_Dtype = type | tuple[type, ...]


def _is_namedtuple(obj: object) -> bool:
    return isinstance(obj, tuple) and hasattr(obj, "_asdict") and hasattr(obj, "_fields")


def _is_dataclass_instance(obj: object) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def _is_sequence(obj: object) -> bool:
    return isinstance(obj, (Sequence, set, frozenset)) and not isinstance(obj, (str, bytes, bytearray))


def _rebuild_mapping(original: Mapping[Any, Any], items: list[tuple[Any, Any]]) -> Mapping[Any, Any]:
    """A mapping of ``original``'s type holding ``items``; a plain dict when that type cannot be built from pairs."""
    if isinstance(original, defaultdict):
        return type(original)(original.default_factory, items)
    try:
        return type(original)(items)  # type: ignore[call-arg]
    except TypeError:
        return dict(items)


def _rebuild_sequence(original: Any, values: list[Any]) -> Any:
    """A sequence (or set) of ``original``'s type holding ``values``; a list when that type cannot be built."""
    if _is_namedtuple(original):
        return type(original)(*values)
    try:
        return type(original)(values)
    except TypeError:
        return values


def _rebuild_dataclass(original: Any, values: dict[str, Any]) -> Any:
    """A shallow copy of ``original`` with ``values`` written into its fields.

    The copy is filled with ``object.__setattr__`` so frozen dataclasses work and ``__init__``/``__post_init__`` do
    not run again; the original object is never mutated.
    """
    result = copy.copy(original)
    for name, value in values.items():
        object.__setattr__(result, name, value)
    return result


def apply_to_collection(
    data: Any,
    dtype: _Dtype,
    function: Callable[..., Any],
    *args: Any,
    wrong_dtype: _Dtype | None = None,
    include_none: bool = True,
    **kwargs: Any,
) -> Any:
    """Return ``data`` with ``function(element, *args, **kwargs)`` applied to each element of type ``dtype``.

    Mappings (including ``OrderedDict`` and ``defaultdict``), lists, tuples, namedtuples, sets and dataclass
    instances (frozen ones included) are traversed and rebuilt with the same type; the input is never modified.
    Elements of ``wrong_dtype`` are left alone. With ``include_none=False`` entries whose result is ``None`` are
    dropped from lists, tuples, sets and mappings; namedtuple and dataclass fields cannot be dropped and keep them.
    Anything else (strings, numbers, unknown objects) is returned as it is.
    """
    if isinstance(data, dtype) and (wrong_dtype is None or not isinstance(data, wrong_dtype)):
        return function(data, *args, **kwargs)

    def recurse(value: Any) -> Any:
        return apply_to_collection(
            value, dtype, function, *args, wrong_dtype=wrong_dtype, include_none=include_none, **kwargs
        )

    if isinstance(data, Mapping):
        items = [(k, recurse(v)) for k, v in data.items()]
        if not include_none:
            items = [(k, v) for k, v in items if v is not None]
        return _rebuild_mapping(data, items)

    if _is_namedtuple(data):
        return _rebuild_sequence(data, [recurse(v) for v in data])

    if _is_sequence(data):
        values = [recurse(v) for v in data]
        if not include_none:
            values = [v for v in values if v is not None]
        return _rebuild_sequence(data, values)

    if _is_dataclass_instance(data):
        fields = [f.name for f in dataclasses.fields(data) if hasattr(data, f.name)]
        return _rebuild_dataclass(data, {name: recurse(getattr(data, name)) for name in fields})

    return data


def apply_to_collections(data1: Any, data2: Any, dtype: _Dtype, function: Callable[[Any, Any], Any]) -> Any:
    """Walk two collections of the same structure together and apply ``function(a, b)`` to each pair of leaves
    of type ``dtype``; the result has ``data1``'s structure. Structures that differ raise ``ValueError``.
    """
    if isinstance(data1, dtype) and isinstance(data2, dtype):
        return function(data1, data2)

    def recurse(a: Any, b: Any) -> Any:
        return apply_to_collections(a, b, dtype, function)

    if isinstance(data1, Mapping) and isinstance(data2, Mapping):
        if set(data1) != set(data2):
            raise ValueError(
                f"Cannot zip mappings with different keys: {sorted(map(str, data1))} vs {sorted(map(str, data2))}"
            )
        return _rebuild_mapping(data1, [(k, recurse(v, data2[k])) for k, v in data1.items()])
    both_sequences = _is_sequence(data1) and _is_sequence(data2)
    if both_sequences and not isinstance(data1, (set, frozenset)):
        if len(data1) != len(data2):
            raise ValueError(f"Cannot zip sequences of different lengths: {len(data1)} vs {len(data2)}")
        return _rebuild_sequence(data1, [recurse(a, b) for a, b in zip(data1, data2)])
    if _is_dataclass_instance(data1) and type(data1) is type(data2):
        names = [f.name for f in dataclasses.fields(data1) if hasattr(data1, f.name)]
        return _rebuild_dataclass(data1, {n: recurse(getattr(data1, n), getattr(data2, n)) for n in names})
    return data1


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        if obj.device == device:
            return obj
        # A host-to-GPU copy from pinned memory, or a GPU-to-GPU copy, can overlap with compute and stays ordered on
        # the stream. A copy to the CPU must block: the caller may read the tensor right away.
        non_blocking = device.type == "cuda" and (obj.device.type == "cuda" or obj.is_pinned())
        return obj.to(device, non_blocking=non_blocking)
    # any other object that knows how to move itself (e.g. a transformers BatchEncoding); some move in place
    moved = obj.to(device)
    return obj if moved is None else moved


class _TransferableDataType(ABC):  # noqa: B024 - a structural check, nothing to implement
    """``isinstance(obj, _TransferableDataType)`` is true for non-module objects that have a callable ``.to``."""

    @classmethod
    def __subclasshook__(cls, subclass: Any) -> bool:
        if cls is not _TransferableDataType:
            return NotImplemented
        return callable(getattr(subclass, "to", None)) and not issubclass(subclass, torch.nn.Module)


_TRANSFERABLE = (torch.Tensor, _TransferableDataType)


def move_data_to_device(batch: Any, device: torch.device | str | int) -> Any:
    """Move every tensor (and every object with a ``.to`` method) in a nested collection to ``device``.

    ``device`` is a ``torch.device``, a string such as ``"cuda:1"``, or an int (a CUDA index). Tensors already on
    ``device`` are returned as they are; modules are left alone (``setup`` moves those).
    """
    if isinstance(device, str):
        device = torch.device(device)
    elif isinstance(device, int) and not isinstance(device, bool):
        device = torch.device("cuda", device)
    elif not isinstance(device, torch.device):
        raise TypeError(f"device must be a torch.device, a string or a CUDA index, got {device!r}")
    if isinstance(batch, torch.Tensor):
        return _to_device(batch, device)
    return apply_to_collection(batch, dtype=_TRANSFERABLE, function=_to_device, device=device)


def convert_tensors_to_scalars(data: Any) -> Any:
    """Replace every one-element tensor in ``data`` with its Python number; larger tensors raise ``ValueError``."""

    def to_item(value: torch.Tensor) -> Any:
        if value.numel() != 1:
            raise ValueError(f"Only one-element tensors can be turned into scalars, got shape {tuple(value.shape)}")
        return value.item()

    return apply_to_collection(data, torch.Tensor, to_item)
