"""Apply a function to every element of a given type inside nested collections."""

from __future__ import annotations

import dataclasses
from abc import ABC
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch


def _is_namedtuple(obj: object) -> bool:
    return isinstance(obj, tuple) and hasattr(obj, "_asdict") and hasattr(obj, "_fields")


def _is_dataclass_instance(obj: object) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def apply_to_collection(
    data: Any,
    dtype: type | tuple[type, ...],
    function: Callable[..., Any],
    *args: Any,
    wrong_dtype: type | tuple[type, ...] | None = None,
    include_none: bool = True,
    allow_frozen: bool = False,
    **kwargs: Any,
) -> Any:
    """Return ``data`` with ``function(element, *args, **kwargs)`` applied to each element of type ``dtype``.

    Dicts (including ``OrderedDict`` and ``defaultdict``), lists, tuples, namedtuples, sets and dataclass instances
    are traversed and rebuilt with the same type. Elements of ``wrong_dtype`` are left alone. With
    ``include_none=False`` entries whose result is ``None`` are dropped from sequences and mappings.
    """
    if isinstance(data, dtype) and (wrong_dtype is None or not isinstance(data, wrong_dtype)):
        return function(data, *args, **kwargs)

    def recurse(value: Any) -> Any:
        return apply_to_collection(
            value,
            dtype,
            function,
            *args,
            wrong_dtype=wrong_dtype,
            include_none=include_none,
            allow_frozen=allow_frozen,
            **kwargs,
        )

    if isinstance(data, Mapping):
        items = [(k, recurse(v)) for k, v in data.items()]
        if not include_none:
            items = [(k, v) for k, v in items if v is not None]
        if isinstance(data, defaultdict):
            return type(data)(data.default_factory, OrderedDict(items))
        try:
            return type(data)(items)
        except TypeError:
            return dict(items)

    if _is_namedtuple(data):
        return type(data)(*(recurse(v) for v in data))

    if isinstance(data, (Sequence, set, frozenset)) and not isinstance(data, (str, bytes)):
        values = [recurse(v) for v in data]
        if not include_none:
            values = [v for v in values if v is not None]
        try:
            return type(data)(values)
        except TypeError:
            return list(values)

    if _is_dataclass_instance(data):
        changes = {}
        for field in dataclasses.fields(data):
            if not field.init:
                continue
            changes[field.name] = recurse(getattr(data, field.name))
        try:
            return dataclasses.replace(data, **changes)
        except dataclasses.FrozenInstanceError:
            if not allow_frozen:
                raise
            return data

    return data


def apply_to_collections(
    data1: Any, data2: Any, dtype: type | tuple[type, ...], function: Callable[[Any, Any], Any]
) -> Any:
    """Zip two collections of the same structure and apply ``function(a, b)`` to each pair of ``dtype`` leaves."""
    if isinstance(data1, dtype) and isinstance(data2, dtype):
        return function(data1, data2)
    if isinstance(data1, Mapping) and isinstance(data2, Mapping):
        if set(data1) != set(data2):
            raise ValueError(f"Cannot zip collections with different keys: {sorted(data1)} vs {sorted(data2)}")
        return type(data1)({k: apply_to_collections(data1[k], data2[k], dtype, function) for k in data1})
    if _is_namedtuple(data1) and _is_namedtuple(data2):
        return type(data1)(*(apply_to_collections(a, b, dtype, function) for a, b in zip(data1, data2)))
    if isinstance(data1, Sequence) and isinstance(data2, Sequence) and not isinstance(data1, str):
        if len(data1) != len(data2):
            raise ValueError(f"Cannot zip sequences of different lengths: {len(data1)} vs {len(data2)}")
        return type(data1)(apply_to_collections(a, b, dtype, function) for a, b in zip(data1, data2))
    return data1


def _to_device(tensor: Any, device: torch.device) -> Any:
    if isinstance(tensor, torch.Tensor):
        if tensor.device == device:
            return tensor
        # Host-to-GPU copies from pinned memory can overlap with compute; CPU and MPS targets gain nothing.
        non_blocking = device.type == "cuda" and tensor.device.type == "cpu" and tensor.is_pinned()
        return tensor.to(device, non_blocking=non_blocking)
    # any other object that knows how to move itself (e.g. a transformers BatchEncoding)
    return tensor.to(device)


class _TransferableDataType(ABC):
    """``isinstance(obj, _TransferableDataType)`` is true for non-tensor objects that have a callable ``.to``."""

    @classmethod
    def __subclasshook__(cls, subclass: Any) -> bool:
        return callable(getattr(subclass, "to", None)) and not issubclass(subclass, torch.nn.Module)


def move_data_to_device(batch: Any, device: torch.device | str | int) -> Any:
    """Move every tensor (and every object with a ``.to`` method) in a nested collection to ``device``."""
    if isinstance(device, str):
        device = torch.device(device)
    elif isinstance(device, int):
        device = torch.device("cuda", device)
    if isinstance(batch, torch.Tensor):
        return _to_device(batch, device)
    return apply_to_collection(batch, dtype=(torch.Tensor, _TransferableDataType), function=_to_device, device=device)


def convert_tensors_to_scalars(data: Any) -> Any:
    """Replace every one-element tensor in ``data`` with its Python number; larger tensors raise ``ValueError``."""

    def to_item(value: torch.Tensor) -> Any:
        if value.numel() != 1:
            raise ValueError(f"Only one-element tensors can be turned into scalars, got shape {tuple(value.shape)}")
        return value.item()

    return apply_to_collection(data, torch.Tensor, to_item)
