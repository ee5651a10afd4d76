"""The hooks of a precision that may scale the loss with a gradient scaler (``FSDPPrecision``'s "16-mixed").

``amp`` is imported as a module (not ``scaled_step`` from it) so that ``amp.MixedPrecision`` can build on these hooks
too without an import cycle.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer
from typing_extensions import override

from fabric_precision import amp
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
        return amp.scaled_step(self.scaler, optimizer, self.precision, **kwargs)

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
