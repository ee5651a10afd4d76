"""fabric-precision: how weights, inputs, outputs, backward and optimizer steps handle numeric precision."""

from fabric_precision.amp import MixedPrecision
from fabric_precision.base import Precision
from fabric_precision.bitsandbytes import BitsandbytesPrecision
from fabric_precision.deepspeed import DeepSpeedLossScaling, DeepSpeedPrecision
from fabric_precision.double import DoublePrecision
from fabric_precision.fsdp import FSDPPrecision
from fabric_precision.half import HalfPrecision
from fabric_precision.registry import (
    PRECISION_REGISTRY,
    PrecisionInput,
    PrecisionName,
    parse_precision,
    precision_plugin,
)
from fabric_precision.transformer_engine import TransformerEnginePrecision
from fabric_precision.xla import XLAPrecision

__version__ = "0.1.0"

__all__ = [
    "PRECISION_REGISTRY",
    "BitsandbytesPrecision",
    "DeepSpeedLossScaling",
    "DeepSpeedPrecision",
    "DoublePrecision",
    "FSDPPrecision",
    "HalfPrecision",
    "MixedPrecision",
    "Precision",
    "PrecisionInput",
    "PrecisionName",
    "TransformerEnginePrecision",
    "XLAPrecision",
    "parse_precision",
    "precision_plugin",
]
