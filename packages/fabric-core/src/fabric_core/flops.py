"""FLOPs: the peak FLOP/s of common accelerators (the denominator of MFU) and counting a model's FLOPs.

The table holds dense peak throughput (no 2:4 sparsity) per chip, as the vendors publish it, for the dtype the
matrix multiplications run in. GeForce cards list half precision with float32 accumulation (what PyTorch uses).
Unknown devices, and CPUs, have no entry: pass the number yourself (``ThroughputMonitor(available_flops=...)``).
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal, get_args

import torch
from torch import nn

from fabric_utils import TORCH_XLA, WarningCache

DtypeName = Literal["float64", "float32", "tfloat32", "bfloat16", "float16", "float8", "int8"]
DTYPE_NAMES: tuple[str, ...] = get_args(DtypeName)

# other spellings accepted for the dtype names
_DTYPE_ALIASES: dict[str, str] = {
    "fp64": "float64",
    "double": "float64",
    "fp32": "float32",
    "float": "float32",
    "tf32": "tfloat32",
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
    "fp8": "float8",
}

_TERA = 1e12


def _peaks(**tflops: float) -> Mapping[str, float]:
    """A device's row: TFLOP/s per dtype name, stored as FLOP/s."""
    unknown = set(tflops) - set(DTYPE_NAMES)
    assert not unknown, f"table rows use the dtype names {DTYPE_NAMES}, not {unknown}"
    return MappingProxyType({name: value * _TERA for name, value in tflops.items()})


_HOPPER_SXM = _peaks(float64=67, float32=67, tfloat32=494.7, bfloat16=989.4, float16=989.4, float8=1978.9, int8=1978.9)
_HOPPER_NVL = _peaks(float64=60, float32=60, tfloat32=417.5, bfloat16=835.5, float16=835.5, float8=1670.5, int8=1670.5)

#: dense peak FLOP/s per chip: device key -> dtype name -> FLOP/s (read only)
PEAK_FLOPS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        "h200 sxm": _HOPPER_SXM,
        "h200 nvl": _HOPPER_NVL,
        "h100 sxm": _HOPPER_SXM,
        "h100 nvl": _HOPPER_NVL,
        "h100 pcie": _peaks(
            float64=51, float32=51, tfloat32=378, bfloat16=756.5, float16=756.5, float8=1513, int8=1513
        ),
        "a100": _peaks(float64=19.5, float32=19.5, tfloat32=156, bfloat16=312, float16=312, int8=624),
        "a10g": _peaks(float32=35, tfloat32=35, bfloat16=70, float16=70, int8=140),
        "a10": _peaks(float32=31.2, tfloat32=62.5, bfloat16=125, float16=125, int8=250),
        "l40s": _peaks(float32=91.6, tfloat32=183, bfloat16=362.05, float16=362.05, float8=733, int8=733),
        "l40": _peaks(float32=90.5, tfloat32=90.5, bfloat16=181.05, float16=181.05, float8=362, int8=362),
        "l4": _peaks(float32=30.3, tfloat32=60, bfloat16=121, float16=121, float8=242, int8=242),
        "v100 sxm": _peaks(float64=7.8, float32=15.7, float16=125),
        "v100 pcie": _peaks(float64=7, float32=14, float16=112),
        "v100s pcie": _peaks(float64=8.2, float32=16.4, float16=130),
        "t4": _peaks(float32=8.1, float16=65, int8=130),
        "rtx 6000 ada": _peaks(float32=91.1, tfloat32=182.1, bfloat16=364.2, float16=364.2, float8=728.5, int8=728.5),
        "rtx a6000": _peaks(float32=38.7, tfloat32=77.4, bfloat16=154.8, float16=154.8, int8=309.7),
        "rtx 4090": _peaks(float32=82.6, tfloat32=82.6, bfloat16=165.2, float16=165.2, float8=330.3, int8=660.6),
        "rtx 3090": _peaks(float32=35.6, tfloat32=35.6, bfloat16=71, float16=71, int8=284),
        # TPUs: matmuls in float32 run as bfloat16 passes at XLA's default precision
        "tpu v2": _peaks(float32=45, bfloat16=45),
        "tpu v3": _peaks(float32=123, bfloat16=123),
        "tpu v4": _peaks(float32=275, bfloat16=275, int8=275),
        "tpu v5e": _peaks(float32=197, bfloat16=197, int8=394),
        "tpu v5p": _peaks(float32=459, bfloat16=459, int8=918),
        "tpu v6e": _peaks(float32=918, bfloat16=918, int8=1836),
    }
)

# device names as torch reports them (lower case) -> table key; the first match wins, so specific names come first
_NAME_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), key)
    for pattern, key in (
        (r"h200.*nvl", "h200 nvl"),
        (r"h200", "h200 sxm"),  # also GH200
        (r"h100.*nvl", "h100 nvl"),
        (r"h100.*pcie", "h100 pcie"),
        (r"h100", "h100 sxm"),  # "NVIDIA H100 80GB HBM3" is the SXM part
        (r"a100", "a100"),
        (r"\ba10g\b", "a10g"),
        (r"\ba10\b", "a10"),
        (r"\bl40s\b", "l40s"),
        (r"\bl40\b", "l40"),
        (r"\bl4\b", "l4"),
        (r"v100s", "v100s pcie"),
        (r"v100.*pcie", "v100 pcie"),
        (r"v100", "v100 sxm"),
        (r"\bt4\b", "t4"),
        (r"rtx 6000 ada", "rtx 6000 ada"),
        (r"rtx a6000", "rtx a6000"),
        (r"rtx 4090(?! d)", "rtx 4090"),
        (r"rtx 3090(?! ti)", "rtx 3090"),
        # TPUs: "TPU " + the accelerator type, e.g. "TPU v4-8", "TPU v5litepod-16"
        (r"\btpu v2\b", "tpu v2"),
        (r"\btpu v3\b", "tpu v3"),
        (r"\btpu v4\b", "tpu v4"),
        (r"\btpu v5(e|lite|litepod)\b", "tpu v5e"),
        (r"\btpu v5p\b", "tpu v5p"),
        (r"\btpu v6e\b", "tpu v6e"),
    )
)

_warnings = WarningCache()


def dtype_name(dtype: torch.dtype | str) -> DtypeName:
    """The table's name for ``dtype``: a ``torch.dtype`` (all float8 variants are "float8") or a name/alias."""
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
        if name.startswith("float8"):
            name = "float8"
    elif isinstance(dtype, str):
        name = _DTYPE_ALIASES.get(dtype.lower(), dtype.lower())
    else:
        raise TypeError(f"dtype must be a torch.dtype or a name, got {type(dtype).__name__}: {dtype!r}")
    if name not in DTYPE_NAMES:
        choices = ", ".join(DTYPE_NAMES)
        raise ValueError(f"No peak FLOPs are kept for dtype {dtype!r}. Choose one of: {choices} (or a torch.dtype).")
    return name  # type: ignore[return-value]


def device_key(device_name: str) -> str | None:
    """The ``PEAK_FLOPS`` key of a device name such as ``torch.cuda.get_device_name()`` gives, or None."""
    lowered = device_name.lower()
    for pattern, key in _NAME_PATTERNS:
        if pattern.search(lowered):
            return key
    return None


def peak_flops(device_name: str, dtype: torch.dtype | str) -> float | None:
    """Dense peak FLOP/s of the device called ``device_name`` in ``dtype``; None when the table does not know it."""
    name = dtype_name(dtype)
    key = device_key(device_name)
    if key is None:
        return None
    return PEAK_FLOPS[key].get(name)


def get_available_flops(device: torch.device | str, dtype: torch.dtype | str) -> float | None:
    """Peak FLOP/s that one ``device`` (CUDA GPU or TPU chip) offers in ``dtype``; None for CPUs, MPS and devices
    or dtypes the table lacks (a warning then says so, once). For float32 on CUDA, TF32's peak is used when
    float32 matmuls may run in TF32 (``torch.set_float32_matmul_precision("high")``)."""
    device = torch.device(device)
    name = dtype_name(dtype)
    if device.type == "cuda":
        if name == "float32" and float32_matmul_uses_tf32():
            name = "tfloat32"
        described = torch.cuda.get_device_name(device)
    elif device.type == "xla":
        accelerator_type = tpu_type()
        if accelerator_type is None:
            _warnings.warn(
                "Could not tell which TPU this is (set TPU_ACCELERATOR_TYPE, e.g. 'v5p-8'); MFU is not computed."
                " Pass `available_flops=` to the throughput monitor instead."
            )
            return None
        described = f"TPU {accelerator_type}"
    else:
        return None
    flops = peak_flops(described, name)
    if flops is None:
        _warnings.warn(
            f"The peak FLOPs of {described!r} in {name} are not in fabric_core.PEAK_FLOPS; MFU is not computed."
            " Pass `available_flops=` to the throughput monitor instead."
        )
    return flops


def float32_matmul_uses_tf32() -> bool:
    """Whether CUDA float32 matrix multiplications may run in TF32 (as the current torch settings say)."""
    setting = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if setting in ("tf32", "ieee"):
        return setting == "tf32"
    try:
        return torch.get_float32_matmul_precision() != "highest"
    except RuntimeError:  # torch refuses to answer when the old and new settings were mixed
        return False


def tpu_type() -> str | None:
    """The accelerator type of this TPU host, e.g. "v4-8" or "v5litepod-16", or None when it cannot be told."""
    for variable in ("TPU_ACCELERATOR_TYPE", "ACCELERATOR_TYPE"):
        if os.environ.get(variable):
            return os.environ[variable]
    if not TORCH_XLA.available:
        return None
    try:  # on a TPU VM the type comes from the metadata server, which torch_xla reads
        tpu = importlib.import_module("torch_xla._internal.tpu")
        described = tpu.get_tpu_env().get("ACCELERATOR_TYPE")
    except Exception:  # an older or newer torch_xla without this helper, or no metadata server
        return None
    return str(described) if described else None


def precision_dtype(precision: Any) -> torch.dtype | None:
    """The dtype a precision plugin's matrix multiplications run in (None when it cannot be told)."""
    name = str(getattr(precision, "precision", ""))
    if name.startswith("transformer-engine"):
        return torch.float8_e4m3fn
    by_prefix = {"64-": torch.float64, "32-": torch.float32, "16-": torch.float16, "bf16-": torch.bfloat16}
    for prefix, dtype in by_prefix.items():
        if name.startswith(prefix):
            return dtype
    declared = getattr(precision, "dtype", None)  # e.g. bitsandbytes: the dtype of the computation
    return declared if isinstance(declared, torch.dtype) else None


def measure_flops(
    model: nn.Module,
    forward_fn: Callable[[], Any],
    loss_fn: Callable[[Any], torch.Tensor] | None = None,
) -> int:
    """FLOPs of one call of ``forward_fn()`` (and, with ``loss_fn``, of ``loss_fn(output).backward()``).

    Counted by ``torch.utils.flop_counter.FlopCounterMode``. Create the model and inputs on the meta device
    (``with torch.device("meta"): ...``) to count without computing or allocating anything. The gradients that the
    parameters of ``model`` held before the call are put back afterwards.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"measure_flops needs the model (an nn.Module), got {type(model).__name__}")
    if not callable(forward_fn):
        raise TypeError(f"forward_fn must be a callable without arguments, got {type(forward_fn).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be None or a callable taking the output, got {type(loss_fn).__name__}")
    saved_grads = [(param, param.grad) for param in model.parameters()]
    for param, _ in saved_grads:
        param.grad = None  # backward would otherwise accumulate into the caller's gradients in place
    from torch.utils.flop_counter import FlopCounterMode  # imported here: ~600 objects and 1 ms of every start-up

    counter = FlopCounterMode(display=False)
    try:
        with counter:
            output = forward_fn()
            if loss_fn is not None:
                loss = loss_fn(output)
                if not isinstance(loss, torch.Tensor):
                    raise TypeError(f"loss_fn must return a tensor to call backward on, got {type(loss).__name__}")
                loss.backward()
    finally:
        for param, grad in saved_grads:
            param.grad = grad
    return int(counter.get_total_flops())
