"""Shared behaviour of the "true" precisions: the whole module, its inputs and new tensors in one dtype."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from torch.nn import Module
from typing_extensions import override

from fabric_precision.base import ForwardInDtype, default_dtype


class TruePrecision(ForwardInDtype):
    """Weights, buffers, floating-point inputs and tensors created in the init contexts and the forward all use
    ``dtype``; floating-point outputs come back in the default dtype (float32)."""

    def __init__(self, dtype: torch.dtype) -> None:
        self._dtype = dtype

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights and of the computation."""
        return self._dtype

    @override
    def convert_module(self, module: Module) -> Module:
        return module.to(dtype=self._dtype)

    @override
    def tensor_init_context(self) -> AbstractContextManager[Any]:
        return default_dtype(self._dtype)

    @override
    def module_init_context(self) -> AbstractContextManager[Any]:
        return default_dtype(self._dtype)

    @override
    def forward_context(self) -> AbstractContextManager[Any]:
        return default_dtype(self._dtype)
