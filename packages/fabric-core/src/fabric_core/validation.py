"""Argument checks of ``Fabric``'s methods: a mistake raises a ``TypeError``/``ValueError`` that names the bad value
and what is accepted, before anything changes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fabric_utils import Logger, check_clip_threshold, check_norm_type


def check_bool(method: str, **flags: Any) -> None:
    """Each of ``flags`` must be a bool: ``"yes"``, ``1`` or ``None`` would silently mean something else."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(
                f"fabric.{method}({name}={value!r}) must be a bool (True or False), got {type(value).__name__}"
            )


def check_optional_bool(method: str, **flags: Any) -> None:
    """Each of ``flags`` must be a bool or None (None: the default behaviour)."""
    for name, value in flags.items():
        if value is not None and not isinstance(value, bool):
            raise TypeError(
                f"fabric.{method}({name}={value!r}) must be a bool or None (True, False or None),"
                f" got {type(value).__name__}"
            )


def check_clip_arguments(clip_val: Any, max_norm: Any, norm_type: Any, error_if_nonfinite: Any) -> None:
    """``clip_gradients`` takes exactly one finite threshold > 0, a p-norm order > 0 and a bool."""
    if (clip_val is None) == (max_norm is None):
        raise ValueError(
            f"clip_gradients needs exactly one of clip_val or max_norm, got clip_val={clip_val!r} and"
            f" max_norm={max_norm!r}. Pass max_norm=... to clip the total norm, or clip_val=... to clamp each value."
        )
    if clip_val is not None:
        check_clip_threshold("clip_val", clip_val, caller="fabric.clip_gradients")
    else:
        check_clip_threshold("max_norm", max_norm, caller="fabric.clip_gradients")
    check_norm_type(norm_type, caller="fabric.clip_gradients")
    check_bool("clip_gradients", error_if_nonfinite=error_if_nonfinite)


def check_loggers(loggers: Any) -> list[Logger]:
    """``loggers``: None, one logger or a list/tuple of them; each implements the ``fabric_utils.Logger`` protocol."""
    if loggers is None:
        return []
    items = list(loggers) if isinstance(loggers, (list, tuple)) else [loggers]
    for logger in items:
        if not isinstance(logger, Logger):
            needed = "name, version, log_metrics, log_hyperparams, save, finalize"
            raise TypeError(f"{logger!r} is not a logger: a logger implements {needed} (fabric_utils.Logger)")
    return items


def check_filter(filter: Any, state: Mapping[str, Any]) -> None:
    """``save(filter=...)`` maps keys of ``state`` to callables ``(name, value) -> bool``."""
    if filter is None:
        return
    if not isinstance(filter, Mapping):
        raise TypeError(f"save(filter=...) must map state keys to callables, got {type(filter).__name__}")
    for key, fn in filter.items():
        if key not in state:
            raise ValueError(f"save(filter=...) names the key {key!r}, which is not in the state: {sorted(state)}")
        if not callable(fn):
            raise TypeError(f"save(filter={{{key!r}: ...}}) must be a callable (name, value) -> bool, got {fn!r}")
