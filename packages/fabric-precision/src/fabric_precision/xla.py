"""Precision on XLA devices (TPUs): 32-true or half weights; the optimizer step goes through ``xm.optimizer_step``."""

from __future__ import annotations

import importlib
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import torch
from torch.nn import Module
from typing_extensions import override

from fabric_precision.base import (
    PRECISION_DTYPES,
    Precision,
    check_choice,
    convert_floating_tensors,
    default_dtype,
    output_dtype,
)
from fabric_utils import TORCH_XLA, MissingDependencyError, Optimizable, Steppable, xla_available

XLAPrecisionName = Literal["32-true", "16-true", "bf16-true"]
XLA_PRECISIONS: tuple[str, ...] = ("32-true", "16-true", "bf16-true")


class XLAPrecision(Precision):
    """Precision for XLA devices.

    "16-true"/"bf16-true" convert the module to the half dtype (and use it in the init contexts, the forward and for
    inputs); no process-wide ``XLA_USE_BF16``-style environment variable is set. Every optimizer step goes through
    ``torch_xla.core.xla_model.optimizer_step``, which also reduces gradients across replicas.
    """

    def __init__(self, precision: XLAPrecisionName = "32-true") -> None:
        check_choice("XLA precision", precision, XLA_PRECISIONS)
        if not xla_available():
            raise MissingDependencyError(
                f"XLAPrecision(precision={precision!r}) requires `torch_xla`, which is not available."
                f" Run: {TORCH_XLA.install}"
            )
        self.precision = precision
        self._dtype = PRECISION_DTYPES[precision]
        self._half = precision != "32-true"

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    # -- what the wrappers may skip -------------------------------------------------------------------------------
    @property
    @override
    def needs_forward_context(self) -> bool:
        return self._half

    @property
    @override
    def needs_input_conversion(self) -> bool:
        return self._half

    @property
    @override
    def needs_output_conversion(self) -> bool:
        return self._half

    # -- module and tensors ---------------------------------------------------------------------------------------
    @override
    def convert_module(self, module: Module) -> Module:
        return module.to(dtype=self._dtype) if self._half else module

    @override
    def tensor_init_context(self) -> AbstractContextManager[Any]:
        return default_dtype(self._dtype) if self._half else nullcontext()

    @override
    def module_init_context(self) -> AbstractContextManager[Any]:
        return self.tensor_init_context()

    @override
    def forward_context(self) -> AbstractContextManager[Any]:
        return default_dtype(self._dtype) if self._half else nullcontext()

    @override
    def convert_input(self, data: Any) -> Any:
        return convert_floating_tensors(data, self._dtype)

    @override
    def convert_output(self, data: Any) -> Any:
        return convert_floating_tensors(data, output_dtype())

    # -- step -----------------------------------------------------------------------------------------------------
    @override
    def optimizer_step(self, optimizer: Optimizable | Steppable, **kwargs: Any) -> Any:
        TORCH_XLA.require("XLAPrecision")
        xla_model = importlib.import_module("torch_xla.core.xla_model")
        return xla_model.optimizer_step(optimizer, optimizer_args=kwargs)
