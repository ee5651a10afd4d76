"""Precision on XLA devices (TPUs): 32-true or half weights; the optimizer step goes through ``xm.optimizer_step``."""

from __future__ import annotations

import importlib
from typing import Any, Literal

from typing_extensions import override

from fabric_precision._sharded import ShardedPrecision
from fabric_utils import TORCH_XLA, MissingDependencyError, Optimizable, Steppable, xla_available

XLAPrecisionName = Literal["32-true", "16-true", "bf16-true"]
XLA_PRECISIONS: tuple[str, ...] = ("32-true", "16-true", "bf16-true")


class XLAPrecision(ShardedPrecision):
    """Precision for XLA devices.

    "16-true"/"bf16-true" convert the module to the half dtype (and use it in the init contexts, the forward and for
    inputs); no process-wide ``XLA_USE_BF16``-style environment variable is set. Every optimizer step goes through
    ``torch_xla.core.xla_model.optimizer_step``, which also reduces gradients across replicas.
    """

    def __init__(self, precision: XLAPrecisionName = "32-true") -> None:
        super().__init__(precision, what="XLA precision", choices=XLA_PRECISIONS)
        if not xla_available():
            raise MissingDependencyError(
                f"XLAPrecision(precision={precision!r}) requires `torch_xla`, which is not available."
                f" Run: {TORCH_XLA.install}"
            )

    # -- step -----------------------------------------------------------------------------------------------------
    @override
    def optimizer_step(self, optimizer: Optimizable | Steppable, **kwargs: Any) -> Any:
        TORCH_XLA.require("XLAPrecision")
        xla_model = importlib.import_module("torch_xla.core.xla_model")
        return xla_model.optimizer_step(optimizer, optimizer_args=kwargs)
