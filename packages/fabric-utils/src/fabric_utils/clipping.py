"""Checks of gradient-clipping arguments, shared by ``Fabric.clip_gradients`` and every strategy's clipping.

torch accepts values that make no sense for clipping: a negative ``max_norm`` multiplies the gradients by a negative
factor, ``0`` erases them, a negative ``clip_val`` clamps every gradient to the same value. These checks run before
any gradient is touched; each error names the call, the bad value as written, and what is valid.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

#: strings ``norm_type`` accepts besides numbers (torch's name for the infinity norm)
INFINITY_NORM_NAMES = ("inf",)

_THRESHOLD_MEANING = {
    "max_norm": "the largest total norm the gradients may keep",
    "clip_val": "each gradient value is clamped to [-clip_val, clip_val]",
}


def check_clip_threshold(name: str, value: Any, *, caller: str = "clip_gradients") -> None:
    """``max_norm`` / ``clip_val`` must be a finite number > 0: ``TypeError`` or ``ValueError`` naming the value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{caller}({name}={value!r}) must be a number (int or float), got {type(value).__name__}")
    if not (math.isfinite(float(value)) and float(value) > 0):
        meaning = _THRESHOLD_MEANING.get(name)
        suffix = f" ({meaning})" if meaning else ""
        raise ValueError(f"{caller}({name}={value!r}) is invalid: it must be a finite number > 0{suffix}")


def check_norm_type(norm_type: Any, *, caller: str = "clip_gradients") -> None:
    """The order of the p-norm: a number > 0 (``float('inf')`` included) or ``'inf'`` in any case."""
    if isinstance(norm_type, str):
        if norm_type.strip().lower() in INFINITY_NORM_NAMES:
            return
    elif isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"{caller}(norm_type={norm_type!r}) must be a number or 'inf', got {type(norm_type).__name__}")
    elif float(norm_type) > 0:  # NaN compares False
        return
    raise ValueError(
        f"{caller}(norm_type={norm_type!r}) is invalid. Use the order of a p-norm > 0, such as 1.0 or 2.0 (the"
        " default), or float('inf') / 'inf' for the largest absolute value."
    )
