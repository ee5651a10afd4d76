"""NVIDIA Transformer Engine: FP8 matmuls (``fp8_autocast``) with Linear/LayerNorm swapped for TE's layers."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from contextlib import AbstractContextManager, ExitStack
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from fabric_precision.base import (
    Precision,
    convert_floating_tensors,
    default_dtype,
    output_dtype,
    replace_submodule,
)
from fabric_utils import TRANSFORMER_ENGINE, cuda_available, rank_zero_warn


class TransformerEnginePrecision(Precision):
    """FP8 training/inference with NVIDIA Transformer Engine ("transformer-engine": bfloat16 weights,
    "transformer-engine-float16": float16 weights).

    ``setup`` swaps ``torch.nn.Linear`` (when its sizes suit FP8 GEMMs: in_features divisible by 8, out_features by
    16) and ``torch.nn.LayerNorm`` for Transformer Engine's layers, copying their weights, and converts the module to
    ``weights_dtype``. The forward runs under ``fp8_autocast`` with ``recipe``; operations that do not run in FP8
    compute in ``fallback_compute_dtype``. Needs a CUDA GPU (FP8 needs Hopper/Ada or newer) and
    ``pip install 'transformer-engine[pytorch]'``.

    Args:
        weights_dtype: dtype of the weights.
        recipe: a Transformer Engine recipe object, or a mapping of ``DelayedScaling`` arguments (``fp8_format`` may
            be given by name, e.g. ``"HYBRID"``); default ``DelayedScaling()``.
        replace_layers: whether to swap Linear/LayerNorm layers (set False when the model already uses TE layers).
        fallback_compute_dtype: dtype of inputs and of the non-FP8 computation; default ``weights_dtype``.
    """

    def __init__(
        self,
        *,
        weights_dtype: torch.dtype = torch.bfloat16,
        recipe: Mapping[str, Any] | Any | None = None,
        replace_layers: bool = True,
        fallback_compute_dtype: torch.dtype | None = None,
    ) -> None:
        for label, dtype in (("weights_dtype", weights_dtype), ("fallback_compute_dtype", fallback_compute_dtype)):
            if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
                raise TypeError(f"{label} must be a floating-point torch.dtype, got {dtype!r}")
        if not cuda_available():
            raise ValueError(
                "TransformerEnginePrecision needs a CUDA GPU (FP8 runs on NVIDIA Hopper/Ada or newer), but none is"
                " visible. Choose a precision that runs here, e.g. bf16-mixed, 16-mixed, bf16-true or 32-true."
            )
        TRANSFORMER_ENGINE.require("TransformerEnginePrecision")
        self.precision = "transformer-engine-float16" if weights_dtype == torch.float16 else "transformer-engine"
        self.weights_dtype = weights_dtype
        self.fallback_compute_dtype = fallback_compute_dtype or weights_dtype
        self.replace_layers = replace_layers
        self.recipe = build_recipe(recipe)

    @property
    def dtype(self) -> torch.dtype:
        return self.weights_dtype

    # -- module and tensors ---------------------------------------------------------------------------------------
    @override
    def convert_module(self, module: nn.Module) -> nn.Module:
        already_converted = any(type(m).__module__.startswith("transformer_engine") for m in module.modules())
        if self.replace_layers and not already_converted:
            module = swap_layers(module, self.weights_dtype)
        return module.to(dtype=self.weights_dtype)

    @override
    def tensor_init_context(self) -> AbstractContextManager[Any]:
        return default_dtype(self.weights_dtype)

    @override
    def module_init_context(self) -> AbstractContextManager[Any]:
        return default_dtype(self.weights_dtype)

    @override
    def forward_context(self) -> AbstractContextManager[Any]:
        te_pytorch = importlib.import_module("transformer_engine.pytorch")
        stack = ExitStack()
        stack.enter_context(default_dtype(self.fallback_compute_dtype))
        stack.enter_context(te_pytorch.fp8_autocast(enabled=True, fp8_recipe=self.recipe))
        return stack

    @override
    def convert_input(self, data: Any) -> Any:
        return convert_floating_tensors(data, self.fallback_compute_dtype)

    @override
    def convert_output(self, data: Any) -> Any:
        return convert_floating_tensors(data, output_dtype())

    @override
    def __repr__(self) -> str:
        return f"{type(self).__name__}(weights_dtype={self.weights_dtype}, recipe={self.recipe!r})"


def build_recipe(recipe: Mapping[str, Any] | Any | None) -> Any:
    """A Transformer Engine recipe from ``None`` (the default ``DelayedScaling``), a mapping of its arguments, or a
    recipe object (returned as is)."""
    if recipe is not None and not isinstance(recipe, Mapping):
        return recipe
    recipes = importlib.import_module("transformer_engine.common.recipe")
    arguments = dict(recipe or {})
    fp8_format = arguments.get("fp8_format")
    if isinstance(fp8_format, str):
        names = [f.name for f in recipes.Format]
        if fp8_format.upper() not in names:
            raise ValueError(f"Unknown fp8_format {fp8_format!r}. Choose one of: {', '.join(names)}")
        arguments["fp8_format"] = recipes.Format[fp8_format.upper()]
    return recipes.DelayedScaling(**arguments)


def swap_layers(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Replace Linear and LayerNorm layers with Transformer Engine's, copying their weights."""
    te_pytorch = importlib.import_module("transformer_engine.pytorch")
    skipped: list[str] = []
    for name, child in list(module.named_modules()):
        replacement: Any = None
        if isinstance(child, nn.Linear):
            if child.in_features % 8 or child.out_features % 16:
                skipped.append(name or type(child).__name__)
                continue
            replacement = te_pytorch.Linear(
                child.in_features, child.out_features, bias=child.bias is not None, params_dtype=dtype
            )
        elif isinstance(child, nn.LayerNorm) and len(child.normalized_shape) == 1 and child.elementwise_affine:
            replacement = te_pytorch.LayerNorm(child.normalized_shape[0], eps=child.eps, params_dtype=dtype)
        if replacement is None:
            continue
        with torch.no_grad():
            replacement.weight.copy_(child.weight)
            if getattr(child, "bias", None) is not None:
                replacement.bias.copy_(child.bias)
        if not name:
            return replacement
        replace_submodule(module, name, replacement)
    if skipped:
        rank_zero_warn(
            f"TransformerEnginePrecision kept {skipped} as torch.nn.Linear: FP8 needs in_features divisible by 8"
            " and out_features divisible by 16."
        )
    return module
