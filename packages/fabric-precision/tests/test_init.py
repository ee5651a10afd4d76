"""The public surface of fabric_precision, and that importing it has no side effects."""

from __future__ import annotations

import json
import subprocess
import sys

import fabric_precision

EXPECTED_PUBLIC_NAMES = [
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


def test_public_surface_is_frozen() -> None:
    assert fabric_precision.__all__ == EXPECTED_PUBLIC_NAMES
    for name in EXPECTED_PUBLIC_NAMES:
        assert getattr(fabric_precision, name) is not None


def test_every_plugin_class_is_a_precision() -> None:
    from fabric_precision import Precision

    plugins = [name for name in EXPECTED_PUBLIC_NAMES if name.endswith("Precision") and name != "Precision"]
    assert len(plugins) == 8
    for name in plugins:
        assert issubclass(getattr(fabric_precision, name), Precision), name


IMPORT_PROBE = """
import json, os, sys
before = dict(os.environ)
default = __import__("torch").get_default_dtype()
import fabric_precision
heavy = ["deepspeed", "bitsandbytes", "torch_xla", "transformer_engine", "torch.distributed.fsdp"]
print(json.dumps({
    "heavy": [m for m in heavy if m in sys.modules],
    "env_changed": dict(os.environ) != before,
    "default_dtype_kept": str(__import__("torch").get_default_dtype()) == str(default),
}))
"""


def test_import_has_no_side_effects() -> None:
    result = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"heavy": [], "env_changed": False, "default_dtype_kept": True}
