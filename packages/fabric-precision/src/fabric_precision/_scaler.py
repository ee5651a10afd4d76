"""The hooks of a precision that may scale the loss with a gradient scaler (``FSDPPrecision``'s "16-mixed").
``amp.MixedPrecision`` builds on these hooks too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import LBFGS, Optimizer
from typing_extensions import override

from fabric_precision.base import Precision
from fabric_utils import Optimizable, Steppable


class GradScalerHooks(Precision):
    """Backward, step and checkpoint hooks around ``self.scaler`` (a GradScaler, or ``None``: no scaling)."""

    scaler: Any

    @override
    def pre_backward(self, tensor: Tensor, module: Module | None) -> Any:
        return tensor if self.scaler is None else self.scaler.scale(tensor)

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
        return {} if self.scaler is None else self.scaler.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.scaler is not None:
            self.scaler.load_state_dict(state_dict)


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
