"""fabric-precision: how weights, inputs, outputs, backward and optimizer steps handle numeric precision.

The plugins of other strategies (bitsandbytes, DeepSpeed, FSDP, XLA) are imported on first access
(``fabric_precision.FSDPPrecision`` imports ``fabric_precision.fsdp`` then), which keeps them out of the import.
"""

from typing import TYPE_CHECKING

from fabric_precision.amp import MixedPrecision
from fabric_precision.base import Precision
from fabric_precision.double import DoublePrecision
from fabric_precision.half import HalfPrecision
from fabric_precision.registry import (
    PRECISION_REGISTRY,
    PrecisionInput,
    PrecisionName,
    parse_precision,
    precision_plugin,
)
from fabric_precision.transformer_engine import TransformerEnginePrecision
from fabric_utils import names_on_access

if TYPE_CHECKING:
    from fabric_precision.bitsandbytes import BitsandbytesPrecision
    from fabric_precision.deepspeed import DeepSpeedLossScaling, DeepSpeedPrecision
    from fabric_precision.fsdp import FSDPPrecision
    from fabric_precision.xla import XLAPrecision

#: public names whose module is imported on first access
_ON_ACCESS = {
    "BitsandbytesPrecision": "fabric_precision.bitsandbytes",
    "DeepSpeedLossScaling": "fabric_precision.deepspeed",
    "DeepSpeedPrecision": "fabric_precision.deepspeed",
    "FSDPPrecision": "fabric_precision.fsdp",
    "XLAPrecision": "fabric_precision.xla",
}
__getattr__, __dir__ = names_on_access(__name__, _ON_ACCESS)

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
