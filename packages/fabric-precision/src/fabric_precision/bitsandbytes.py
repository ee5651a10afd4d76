"""Weight quantization with bitsandbytes: 4-bit (NF4/FP4, optionally double-quantized) and 8-bit ``Linear`` layers."""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType
from typing import Literal

import torch
from torch import nn
from typing_extensions import override

from fabric_precision._true import TruePrecision
from fabric_precision.base import check_choice, replace_submodule
from fabric_utils import BITSANDBYTES

BitsandbytesMode = Literal["nf4", "nf4-dq", "fp4", "fp4-dq", "int8", "int8-training"]
BITSANDBYTES_MODES: tuple[str, ...] = ("nf4", "nf4-dq", "fp4", "fp4-dq", "int8", "int8-training")

#: outlier threshold of LLM.int8(): input features above it are multiplied in 16 bit
INT8_THRESHOLD = 6.0


class BitsandbytesPrecision(TruePrecision):
    """Replace the module's ``torch.nn.Linear`` layers with bitsandbytes' quantized ones.

    Modes: "nf4"/"fp4" (4-bit weights), "nf4-dq"/"fp4-dq" (4-bit with double-quantized statistics), "int8"
    (LLM.int8() inference), "int8-training" (8-bit matmuls with float16 weights that can be trained). The rest of the
    module is converted to ``dtype``, which is also the compute dtype of the 4-bit layers and the dtype of inputs
    and new tensors; outputs come back in the default dtype (as in the "true" precisions, whose hooks it reuses).
    Weights are quantized when the module is moved to its device (Fabric's ``setup`` does that), or at once when the
    module already lives on an accelerator.

    Args:
        mode: the quantization mode.
        dtype: the dtype of everything that is not quantized; default float16 for the int8 modes (the only one they
            support) and the default dtype otherwise.
        ignore_modules: qualified names of submodules (as in ``named_modules()``) whose Linear layers stay as they are.
    """

    def __init__(
        self,
        mode: BitsandbytesMode,
        dtype: torch.dtype | None = None,
        ignore_modules: Iterable[str] | None = None,
    ) -> None:
        check_choice("bitsandbytes quantization mode", mode, BITSANDBYTES_MODES)
        if dtype is None:
            dtype = torch.float16 if mode.startswith("int8") else torch.get_default_dtype()
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        if mode.startswith("int8") and dtype != torch.float16:
            raise ValueError(f"mode={mode!r} works with dtype=torch.float16 only, got dtype={dtype}.")
        if isinstance(ignore_modules, str):
            raise TypeError(f"ignore_modules takes a collection of module names, got the string {ignore_modules!r}")
        BITSANDBYTES.require(f"BitsandbytesPrecision(mode={mode!r})")
        super().__init__(dtype)
        self.mode = mode
        self.precision = f"bitsandbytes-{mode}"
        self.ignore_modules = frozenset(ignore_modules or ())

    # -- module and tensors ---------------------------------------------------------------------------------------
    @override
    def convert_module(self, module: nn.Module) -> nn.Module:
        bnb = BITSANDBYTES.require("BitsandbytesPrecision")
        quantized_types = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
        if any(isinstance(m, quantized_types) for m in module.modules()):
            # converted before (by this plugin or by hand): only make the compute dtype ours
            self._pin_compute_dtype(bnb, module)
            return module
        self._check_ignored_names(module)
        targets = [
            name for name, m in module.named_modules() if isinstance(m, nn.Linear) and not self._is_ignored(name)
        ]
        if not targets:
            raise ValueError(
                f"BitsandbytesPrecision(mode={self.mode!r}) quantizes torch.nn.Linear layers, but the"
                f" {type(module).__name__} module has none outside ignore_modules={sorted(self.ignore_modules)}."
            )
        module = module.to(dtype=self._dtype)
        for name in targets:
            replacement = self._quantized_linear(bnb, module.get_submodule(name))
            if not name:
                return replacement
            replace_submodule(module, name, replacement)
        return module

    def _is_ignored(self, name: str) -> bool:
        return any(name == ignored or name.startswith(ignored + ".") for ignored in self.ignore_modules)

    def _check_ignored_names(self, module: nn.Module) -> None:
        names = {name for name, _ in module.named_modules()}
        unknown = sorted(self.ignore_modules - names)
        if unknown:
            raise ValueError(
                f"ignore_modules names {unknown} that are not submodules of {type(module).__name__}."
                " Use the qualified names that `module.named_modules()` yields."
            )

    def _quantized_linear(self, bnb: ModuleType, linear: nn.Module) -> nn.Module:
        """The bitsandbytes layer holding ``linear``'s weights; quantized now if they live on an accelerator."""
        assert isinstance(linear, nn.Linear)
        has_bias = linear.bias is not None
        size = (linear.in_features, linear.out_features)
        layer: nn.Module
        if self.mode.startswith("int8"):
            trainable = self.mode == "int8-training"
            layer = bnb.nn.Linear8bitLt(
                *size, bias=has_bias, has_fp16_weights=trainable, threshold=INT8_THRESHOLD, device="meta"
            )
            layer.weight = bnb.nn.Int8Params(linear.weight.data, requires_grad=trainable, has_fp16_weights=trainable)
        else:
            options = {"compress_statistics": self.mode.endswith("-dq"), "quant_type": self.mode[:3]}
            layer = bnb.nn.Linear4bit(*size, bias=has_bias, compute_dtype=self._dtype, device="meta", **options)
            weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, **options)
            if hasattr(layer.weight, "module"):  # newer bitsandbytes keeps the quantization state on the layer too
                weight.module = layer
            layer.weight = weight
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.data, requires_grad=linear.bias.requires_grad)
        layer.train(linear.training)
        device = linear.weight.device
        if device.type not in ("cpu", "meta"):
            layer = layer.to(device)
        return layer

    def _pin_compute_dtype(self, bnb: ModuleType, module: nn.Module) -> None:
        for m in module.modules():
            if isinstance(m, bnb.nn.Linear4bit):
                m.compute_dtype = self._dtype
                m.compute_type_is_set = True

    @override
    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r}, dtype={self._dtype})"
