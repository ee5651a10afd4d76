"""Conversions shared by the loggers: metric values to scalars, hyperparameters to plain YAML/TensorBoard values."""

from __future__ import annotations

import dataclasses
import numbers
import operator
from argparse import Namespace
from collections.abc import Mapping
from enum import Enum
from pathlib import PurePath
from typing import Any

import torch


def add_prefix(metrics: Mapping[str, Any], prefix: str, separator: str) -> dict[str, Any]:
    """``{"loss": 1}`` with prefix ``"train"`` and separator ``"-"`` becomes ``{"train-loss": 1}``."""
    if not prefix:
        return dict(metrics)
    return {f"{prefix}{separator}{name}": value for name, value in metrics.items()}


def metric_scalar(name: str, value: Any) -> int | float:
    """Return ``value`` as a Python number: numbers pass, one-element tensors and arrays give their item.

    Raises ``TypeError`` (or ``ValueError`` for a tensor of several elements) naming the metric and the value.
    """
    if isinstance(value, bool):
        return int(value)
    if type(value) in (int, float):
        return value  # type: ignore[no-any-return]
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"Cannot log metric {name!r}: a tensor of shape {tuple(value.shape)} is not a scalar. "
                "Log a number or a one-element tensor (reduce it first, e.g. `.mean()`)."
            )
        return metric_scalar(name, value.item())
    size = getattr(value, "size", None)
    if isinstance(size, int) and callable(getattr(value, "item", None)):  # numpy scalars and arrays
        if size != 1:
            raise ValueError(f"Cannot log metric {name!r}: an array of {size} elements is not a scalar.")
        return metric_scalar(name, value.item())
    if isinstance(value, numbers.Real):
        return float(value) if not isinstance(value, numbers.Integral) else int(value)
    raise TypeError(
        f"Cannot log metric {name!r}: {value!r} of type {type(value).__name__} is not a number. "
        "Log an int, a float or a one-element tensor."
    )


def check_step(step: Any) -> int | None:
    """``None`` or the step as an int (numpy integers and integer one-element tensors are accepted)."""
    if step is None:
        return None
    try:
        return operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an int or None, got {type(step).__name__}: {step!r}") from None


def convert_params(params: Mapping[str, Any] | Namespace | None) -> dict[str, Any]:
    """Hyperparameters as a dict: a mapping is copied, a ``Namespace`` gives its attributes, ``None`` nothing."""
    if params is None:
        return {}
    if isinstance(params, Namespace):
        return dict(vars(params))
    if isinstance(params, Mapping):
        return dict(params)
    raise TypeError(f"Hyperparameters must be a dict or an argparse.Namespace, got {type(params).__name__}: {params!r}")


def flatten_params(params: Mapping[str, Any], separator: str = "/") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` becomes ``{"optim/lr": 0.1}``; namespaces nest like mappings."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Namespace):
            value = vars(value)
        if isinstance(value, Mapping) and value:
            for sub_key, sub_value in flatten_params(value, separator).items():
                flat[f"{key}{separator}{sub_key}"] = sub_value
        else:
            flat[str(key)] = value
    return flat


def _qualified_name(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    return f"{module}.{qualname}" if module and module != "builtins" else str(qualname)


def yaml_value(value: Any) -> Any:
    """``value`` rebuilt from types that ``yaml.safe_dump`` writes; anything else becomes readable text."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {str(k): yaml_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [yaml_value(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((yaml_value(v) for v in value), key=repr)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, torch.Tensor) or callable(getattr(value, "tolist", None)):
        return yaml_value(value.tolist())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return yaml_value(dataclasses.asdict(value))
    if isinstance(value, type) or callable(value):
        return _qualified_name(value)
    return str(value)


def tensorboard_value(value: Any) -> bool | int | float | str:
    """A hyperparameter value TensorBoard's HParams plugin can show: a bool, number or string."""
    plain = yaml_value(value)
    if isinstance(plain, (bool, int, float, str)):
        return plain
    return str(plain)
