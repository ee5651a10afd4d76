"""Checks of gradient-clipping arguments, run by the strategies before they touch any gradient.

torch accepts values that make no sense for clipping: a negative ``max_norm`` multiplies the gradients by a negative
factor, ``0`` erases them, a negative ``clip_val`` clamps every gradient to the same value.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

#: strings ``norm_type`` accepts besides numbers (torch's name for the infinity norm)
INFINITY_NORM_NAMES = ("inf",)


def check_clip_threshold(name: str, value: Any) -> None:
    """``max_norm`` / ``clip_val`` must be a finite number > 0; ``TypeError``/``ValueError`` naming the value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}={value!r} must be a number (int or float), got {type(value).__name__}")
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"{name}={value!r} is invalid: gradient clipping needs a finite number > 0")


def check_norm_type(norm_type: Any) -> None:
    """The order of the p-norm: a number > 0 (``float('inf')`` included) or ``'inf'``."""
    if isinstance(norm_type, str):
        if norm_type.strip().lower() in INFINITY_NORM_NAMES:
            return
    elif isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"norm_type={norm_type!r} must be a number or 'inf', got {type(norm_type).__name__}")
    elif float(norm_type) > 0:  # NaN compares False
        return
    raise ValueError(
        f"norm_type={norm_type!r} is invalid. Use the order of a p-norm > 0, such as 1.0 or 2.0 (the default),"
        " or float('inf') / 'inf' for the largest absolute value."
    )
