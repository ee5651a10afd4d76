"""``16-mixed`` and ``bf16-mixed``: automatic mixed precision (autocast), with a GradScaler for float16."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Literal

import torch
from typing_extensions import override

from fabric_precision._scaler import GradScalerHooks
from fabric_precision.base import (
    _OUTER_DEFAULT_DTYPES,
    PRECISION_DTYPES,
    check_choice,
    convert_floating_tensors,
)

MixedPrecisionName = Literal["16-mixed", "bf16-mixed"]
MIXED_PRECISIONS: tuple[str, ...] = ("16-mixed", "bf16-mixed")
AutocastDeviceType = Literal["cpu", "cuda", "mps", "xpu", "hpu"]
AUTOCAST_DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda", "mps", "xpu", "hpu")


class MixedPrecision(GradScalerHooks):
    """Automatic mixed precision: weights stay float32, the forward runs under ``torch.autocast``.

    With "16-mixed" a ``torch.amp.GradScaler`` scales the loss before backward, unscales the gradients before
    clipping, and skips an optimizer step whose gradients hold inf/NaN (lowering the scale). Its state is part of
    ``state_dict`` so a resumed run continues with the same scale. "bf16-mixed" needs no scaler.

    Args:
        precision: "16-mixed" or "bf16-mixed".
        device_type: the device type autocast and the scaler run on ("cpu", "cuda", ...).
        scaler: a GradScaler to use for "16-mixed" instead of a default one.
    """

    def __init__(
        self,
        precision: MixedPrecisionName,
        device_type: AutocastDeviceType = "cpu",
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        check_choice("mixed precision", precision, MIXED_PRECISIONS)
        check_choice("autocast device type", device_type, AUTOCAST_DEVICE_TYPES)
        if scaler is not None and precision == "bf16-mixed":
            raise ValueError(
                f"precision='bf16-mixed' takes no GradScaler (bfloat16 has float32's range), got scaler={scaler!r}."
                " Pass scaler=None, or use precision='16-mixed'."
            )
        if scaler is None and precision == "16-mixed":
            scaler = torch.amp.GradScaler(device_type)
        self.precision = precision
        self.device_type = device_type
        self.scaler = scaler
        self._dtype = PRECISION_DTYPES[precision]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype autocast computes eligible operations in."""
        return self._dtype

    @override
    def forward_context(self) -> AbstractContextManager[Any]:
        return torch.autocast(self.device_type, dtype=self._dtype)

    # Both conversions run on every forward: ``base.output_dtype()`` is written out here to save a call.
    @override
    def convert_input(self, data: Any) -> Any:
        # the weights are in the default dtype; autocast lowers what it computes in half precision
        outer = _OUTER_DEFAULT_DTYPES
        return convert_floating_tensors(data, outer[0] if outer else torch.get_default_dtype())

    @override
    def convert_output(self, data: Any) -> Any:
        outer = _OUTER_DEFAULT_DTYPES
        return convert_floating_tensors(data, outer[0] if outer else torch.get_default_dtype())

    @override
    def __repr__(self) -> str:
        return f"{type(self).__name__}(precision={self.precision!r}, device_type={self.device_type!r})"
