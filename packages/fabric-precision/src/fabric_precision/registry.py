"""The precision registry, the parser for user precision values, and ``precision_plugin(name)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal, Union

import torch

from fabric_precision.amp import MixedPrecision
from fabric_precision.base import Precision
from fabric_precision.double import DoublePrecision
from fabric_precision.half import HalfPrecision
from fabric_precision.transformer_engine import TransformerEnginePrecision
from fabric_utils import Registry, rank_zero_warn

PrecisionName = Literal[
    "64-true",
    "32-true",
    "16-true",
    "bf16-true",
    "16-mixed",
    "bf16-mixed",
    "transformer-engine",
    "transformer-engine-float16",
]
#: what ``parse_precision`` accepts besides the registered names
PrecisionInput = Union[PrecisionName, Literal[64, 32, 16, "64", "32", "16", "bf16"], str, int]

#: Canonical precision names -> factories of their plugins. Third-party plugins register through the
#: ``fabric.precision`` entry-point group and can then be chosen by name.
PRECISION_REGISTRY: Registry[Precision] = Registry("precision", entry_point_group="fabric.precision")
PRECISION_REGISTRY.register("64-true", DoublePrecision, description="float64 weights and computation")
PRECISION_REGISTRY.register("32-true", Precision, description="float32 weights and computation (the default)")
PRECISION_REGISTRY.register(
    "16-true", HalfPrecision, description="float16 weights and computation", precision="16-true"
)
PRECISION_REGISTRY.register(
    "bf16-true", HalfPrecision, description="bfloat16 weights and computation", precision="bf16-true"
)
PRECISION_REGISTRY.register(
    "16-mixed",
    MixedPrecision,
    description="float32 weights, float16 autocast and a GradScaler",
    precision="16-mixed",
)
PRECISION_REGISTRY.register(
    "bf16-mixed", MixedPrecision, description="float32 weights, bfloat16 autocast", precision="bf16-mixed"
)
PRECISION_REGISTRY.register(
    "transformer-engine",
    TransformerEnginePrecision,
    description="FP8 with Transformer Engine, bfloat16 weights",
    weights_dtype=torch.bfloat16,
)
PRECISION_REGISTRY.register(
    "transformer-engine-float16",
    TransformerEnginePrecision,
    description="FP8 with Transformer Engine, float16 weights",
    weights_dtype=torch.float16,
)

# alias -> (canonical name, whether using it deserves a warning)
_ALIASES: dict[object, tuple[str, bool]] = {
    64: ("64-true", False),
    "64": ("64-true", False),
    32: ("32-true", False),
    "32": ("32-true", False),
    16: ("16-mixed", True),
    "16": ("16-mixed", True),
    "bf16": ("bf16-mixed", True),
}
ALIAS_NAMES: tuple[str, ...] = ("64", "32", "16", "bf16")


def parse_precision(value: PrecisionInput) -> str:
    """The canonical name of a precision value: ``"bf16-mixed"`` for ``"bf16-mixed"`` or ``"bf16"``, ``"32-true"``
    for ``32`` or ``"32"``, and so on; registered third-party names pass through.

    The aliases ``16``/``"16"`` (-> "16-mixed") and ``"bf16"`` (-> "bf16-mixed") work with a warning. Anything else
    raises ``ValueError`` listing the valid values.
    """
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        alias = _ALIASES.get(value)
        if alias is not None:
            canonical, warn = alias
            if warn:
                rank_zero_warn(
                    f"precision={value!r} is accepted for compatibility and means {canonical!r}; pass"
                    f" precision={canonical!r} to say so explicitly and silence this warning."
                )
            return canonical
        if isinstance(value, str) and value in PRECISION_REGISTRY:
            return value
    raise ValueError(PRECISION_REGISTRY.unknown_message(value, extra_choices=ALIAS_NAMES))


def precision_plugin(name: PrecisionInput, device_type: str = "cpu") -> Precision:
    """Build the plugin for a precision value (any form ``parse_precision`` accepts).

    ``device_type`` ("cpu", "cuda", ...) is passed to plugins that take it, such as ``MixedPrecision`` for autocast.
    """
    canonical = parse_precision(name)
    factory = PRECISION_REGISTRY.get(canonical)
    kwargs: dict[str, Any] = {"device_type": device_type} if _accepts_keyword(factory, "device_type") else {}
    return PRECISION_REGISTRY.create(canonical, **kwargs)


def _accepts_keyword(factory: Callable[..., Any], keyword: str) -> bool:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    if keyword in parameters:
        return parameters[keyword].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
