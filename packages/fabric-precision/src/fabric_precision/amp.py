"""``16-mixed`` and ``bf16-mixed``: automatic mixed precision (autocast), with a GradScaler for float16."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Literal

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import LBFGS, Optimizer
from typing_extensions import override

from fabric_precision.base import (
    _OUTER_DEFAULT_DTYPES,
    PRECISION_DTYPES,
    Precision,
    check_choice,
    convert_floating_tensors,
)
from fabric_utils import Optimizable, Steppable

MixedPrecisionName = Literal["16-mixed", "bf16-mixed"]
MIXED_PRECISIONS: tuple[str, ...] = ("16-mixed", "bf16-mixed")
AutocastDeviceType = Literal["cpu", "cuda", "mps", "xpu", "hpu"]
AUTOCAST_DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda", "mps", "xpu", "hpu")


class MixedPrecision(Precision):
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
    def pre_backward(self, tensor: Tensor, module: Module | None) -> Any:
        if self.scaler is None:
            return tensor
        return self.scaler.scale(tensor)

    @override
    def optimizer_step(self, optimizer: Optimizable | Steppable, **kwargs: Any) -> Any:
        if self.scaler is None:
            return optimizer.step(**kwargs)
        return scaled_step(self.scaler, optimizer, self.precision, **kwargs)

    @override
    def unscale_gradients(self, optimizer: Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    @override
    def state_dict(self) -> dict[str, Any]:
        if self.scaler is None:
            return {}
        return self.scaler.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.scaler is not None:
            self.scaler.load_state_dict(state_dict)

    @override
    def __repr__(self) -> str:
        return f"{type(self).__name__}(precision={self.precision!r}, device_type={self.device_type!r})"


def scaled_step(scaler: torch.amp.GradScaler, optimizer: Optimizable | Steppable, precision: str, **kwargs: Any) -> Any:
    """Step through ``scaler`` (which skips the step when the gradients hold inf/NaN) and update its scale.

    Returns what the optimizer's ``step`` returned, or ``None`` when the step was skipped.
    """
    if isinstance(optimizer, LBFGS):
        raise TypeError(
            f"precision={precision!r} does not support the LBFGS optimizer: its step re-evaluates the loss through a"
            " closure, which a GradScaler cannot unscale. Use precision='bf16-mixed' or '32-true' with LBFGS."
        )
    if "closure" in kwargs and kwargs["closure"] is None:
        kwargs = {key: value for key, value in kwargs.items() if key != "closure"}
    if "closure" in kwargs:
        raise TypeError(
            f"precision={precision!r} does not support optimizer.step(closure=...): the GradScaler must see the"
            " gradients before the step. Call backward yourself, then step without a closure."
        )
    result = scaler.step(optimizer, **kwargs)  # type: ignore[arg-type]
    scaler.update()
    return result
