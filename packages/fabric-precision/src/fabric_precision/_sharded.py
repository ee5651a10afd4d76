"""Shared behaviour of the precisions of sharding engines (FSDP2, DeepSpeed) and of XLA.

"-true" half precisions convert the module before the engine wraps it, and make new modules and tensors half;
otherwise the module stays as it is and the engine casts what it needs. Outputs come back in the default dtype.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import torch
from torch.nn import Module
from typing_extensions import override

from fabric_precision.base import (
    PRECISION_DTYPES,
    ForwardInDtype,
    check_choice,
    default_dtype,
)
from fabric_precision.half import HALF_PRECISIONS

ShardedPrecisionName = Literal["32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed"]
SHARDED_PRECISIONS: tuple[str, ...] = ("32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed")


class ShardedPrecision(ForwardInDtype):
    """The hooks ``FSDPPrecision``, ``DeepSpeedPrecision`` and ``XLAPrecision`` share.

    ``what`` names the plugin in errors; ``choices`` are the precisions it accepts.
    """

    def __init__(self, precision: str, *, what: str, choices: tuple[str, ...] = SHARDED_PRECISIONS) -> None:
        check_choice(what, precision, choices)
        self.precision = precision
        self._dtype = PRECISION_DTYPES[precision]
        self._true_half = precision in HALF_PRECISIONS

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the forward and backward compute in."""
        return self._dtype

    # -- what the wrappers may skip: nothing to convert for 32-true -----------------------------------------------
    @property
    @override
    def needs_input_conversion(self) -> bool:
        return self.precision != "32-true"

    @property
    @override
    def needs_output_conversion(self) -> bool:
        return self.precision != "32-true"

    # -- module and tensors ---------------------------------------------------------------------------------------
    @override
    def convert_module(self, module: Module) -> Module:
        return module.to(dtype=self._dtype) if self._true_half else module

    @override
    def tensor_init_context(self) -> AbstractContextManager[Any]:
        return default_dtype(self._dtype) if self._true_half else nullcontext()

    @override
    def module_init_context(self) -> AbstractContextManager[Any]:
        return self.tensor_init_context()

    # -- forward: "-true" half precisions compute in their dtype; the engine casts for the others ----------------
    @property
    @override
    def needs_forward_context(self) -> bool:
        return self._true_half

    @override
    def forward_context(self) -> AbstractContextManager[Any]:
        return default_dtype(self._dtype) if self._true_half else nullcontext()
