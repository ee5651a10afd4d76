"""``16-true`` and ``bf16-true``: the whole module in half precision."""

from __future__ import annotations

from typing import Literal

from fabric_precision._true import TruePrecision
from fabric_precision.base import PRECISION_DTYPES, check_choice

HalfPrecisionName = Literal["16-true", "bf16-true"]
HALF_PRECISIONS: tuple[str, ...] = ("16-true", "bf16-true")


class HalfPrecision(TruePrecision):
    """Weights and computation in float16 ("16-true") or bfloat16 ("bf16-true"), without float32 master weights.

    ``setup`` converts the module; modules and tensors created in ``init_module``/``init_tensor`` and inside the
    forward default to the half dtype; floating-point inputs are cast to it and floating-point outputs come back in
    the default dtype (float32). Uses half the memory of "32-true" but optimizer updates lose precision; prefer the
    "-mixed" variants for training from scratch.
    """

    def __init__(self, precision: HalfPrecisionName = "16-true") -> None:
        check_choice("half precision", precision, HALF_PRECISIONS)
        super().__init__(PRECISION_DTYPES[precision])
        self.precision = precision
