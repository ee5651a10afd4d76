"""``64-true``: the whole module in double precision."""

from __future__ import annotations

import torch

from fabric_precision._true import TruePrecision


class DoublePrecision(TruePrecision):
    """Full double precision ("64-true").

    ``setup`` converts the module to float64; modules and tensors created in ``init_module``/``init_tensor`` and
    inside the forward default to float64; floating-point inputs are cast to float64 and floating-point outputs
    back to the default dtype (float32).
    """

    precision = "64-true"

    def __init__(self) -> None:
        super().__init__(torch.float64)
