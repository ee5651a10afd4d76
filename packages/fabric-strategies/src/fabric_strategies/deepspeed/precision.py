"""Precision under DeepSpeed: which plugin it takes, the ``fp16``/``bf16`` config sections, float16 on the CPU."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from fabric_precision import DeepSpeedPrecision, Precision

DEEPSPEED_PRECISIONS: tuple[str, ...] = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")
_PRECISION_SECTIONS = ("fp16", "bf16")


def enabled_sections(config: Mapping[str, Any]) -> set[str]:
    """The precision sections (``fp16``, ``bf16``) a DeepSpeed config enables."""
    return {key for key in _PRECISION_SECTIONS if isinstance(config.get(key), Mapping) and config[key].get("enabled")}


def with_precision_sections(config: Mapping[str, Any], precision: DeepSpeedPrecision) -> dict[str, Any]:
    """A copy of ``config`` with the plugin's precision section; a config that enables another one is an error."""
    merged = copy.deepcopy(dict(config))
    wanted = precision.deepspeed_config()
    given = enabled_sections(merged)
    if given and given != set(wanted):
        raise ValueError(
            f"The DeepSpeed config enables {sorted(given)}, but the precision is {precision.precision!r}"
            f" (which needs {sorted(wanted) or 'neither fp16 nor bf16'}). Remove the section from the config or"
            " choose the matching precision: fp16 -> '16-mixed', bf16 -> 'bf16-mixed'."
        )
    for key, value in wanted.items():
        merged.setdefault(key, value)
    return merged


def check_deepspeed_precision(precision: Precision | None) -> None:
    if precision is not None and not isinstance(precision, DeepSpeedPrecision):
        raise TypeError(
            "DeepSpeedStrategy needs a DeepSpeedPrecision plugin (DeepSpeed casts and scales itself), got"
            f" {precision!r}."
            f" Pass DeepSpeedPrecision(...) or a precision name: {', '.join(DEEPSPEED_PRECISIONS)}"
        )


def config_precision(config: Mapping[str, Any]) -> str:
    sections = enabled_sections(config)
    return "fp16" if "fp16" in sections else "bf16" if "bf16" in sections else "32-true"


def check_device_precision(name: str, device_type: str, source: str = "") -> None:
    """DeepSpeed refuses float16 on the CPU (its message is about the device type); say it in fabric's terms."""
    if device_type == "cpu" and name in ("16-mixed", "16-true", "fp16"):
        what = f"{source} {name}".strip()
        alternatives = "bf16-true, bf16-mixed or 32-true" if name == "16-true" else "bf16-mixed or 32-true"
        raise ValueError(f"{what} is not supported by DeepSpeed on CPU; use {alternatives}")
