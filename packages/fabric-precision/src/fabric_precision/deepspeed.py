"""Precision under DeepSpeed: the engine owns loss scaling and the optimizer step; this plugin says which dtype."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module
from typing_extensions import override

from fabric_precision._sharded import ShardedPrecision, ShardedPrecisionName


@dataclass(frozen=True, kw_only=True)
class DeepSpeedLossScaling:
    """DeepSpeed's fp16 loss-scaling settings (the ``"fp16"`` section of its config).

    ``loss_scale=0`` selects dynamic scaling starting at ``2**initial_scale_power``; any other value is a fixed scale.
    """

    loss_scale: float = 0.0
    initial_scale_power: int = 16
    loss_scale_window: int = 1000
    hysteresis: int = 2
    min_loss_scale: float = 1.0


class DeepSpeedPrecision(ShardedPrecision):
    """Precision of a model trained by a DeepSpeed engine.

    DeepSpeed casts the model and scales the loss itself, driven by its config: ``deepspeed_config()`` is the
    fragment (``{"bf16": {...}}`` or ``{"fp16": {...}}``) to merge into it. Backward goes through the engine
    (``model.backward(loss)``), and so does the optimizer step. Inputs are cast to the engine's dtype; outputs come
    back in the default dtype (float32). With "16-true"/"bf16-true" the module is converted before the engine
    is built, and modules and tensors created in the init contexts use the half dtype.
    """

    def __init__(self, precision: ShardedPrecisionName, *, loss_scaling: DeepSpeedLossScaling | None = None) -> None:
        super().__init__(precision, what="DeepSpeed precision")
        if loss_scaling is not None and not precision.startswith("16-"):
            raise ValueError(
                f"loss_scaling applies to float16 only, but precision={precision!r}. Choose one of: 16-mixed, 16-true"
                " (or pass loss_scaling=None)."
            )
        self.loss_scaling = loss_scaling or DeepSpeedLossScaling()

    def deepspeed_config(self) -> dict[str, Any]:
        """The precision part of a DeepSpeed config; empty for "32-true"."""
        if self._dtype == torch.float16:
            return {"fp16": {"enabled": True, **asdict(self.loss_scaling)}}
        if self._dtype == torch.bfloat16:
            return {"bf16": {"enabled": True}}
        return {}

    # -- backward -------------------------------------------------------------------------------------------------
    @override
    def backward(self, tensor: Tensor, model: Module | None, *args: Any, **kwargs: Any) -> None:
        engine_backward = getattr(model, "backward", None)
        if model is None or not callable(engine_backward):
            raise TypeError(
                "DeepSpeedPrecision.backward needs the DeepSpeed engine as `model` (backward and loss scaling go"
                f" through `engine.backward(loss)`), got model={model!r}."
            )
        engine_backward(tensor, *args, **kwargs)

    @override
    def __repr__(self) -> str:
        return f"{type(self).__name__}(precision={self.precision!r})"
