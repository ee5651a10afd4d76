"""Precision for FSDP2 (``torch.distributed.fsdp.fully_shard``): a ``MixedPrecisionPolicy`` plus the usual hooks."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import override

from fabric_precision._scaler import GradScalerHooks
from fabric_precision._sharded import ShardedPrecision, ShardedPrecisionName
from fabric_precision.amp import AUTOCAST_DEVICE_TYPES, AutocastDeviceType
from fabric_precision.base import check_choice, convert_floating_tensors, default_dtype, output_dtype

if TYPE_CHECKING:
    from torch.distributed.fsdp import MixedPrecisionPolicy
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler


class FSDPPrecision(GradScalerHooks, ShardedPrecision):
    """Precision of a module sharded with FSDP2.

    - "32-true": everything float32.
    - "16-true"/"bf16-true": ``setup`` converts the module to the half dtype before sharding; parameters,
      computation and gradient reduction all use it.
    - "16-mixed"/"bf16-mixed": the sharded parameters (and so the optimizer) stay float32; FSDP all-gathers them in
      the half dtype for the forward/backward and reduces gradients in float32. The forward also runs under
      ``torch.autocast`` so that operations autocast keeps in float32 (softmax, norms, losses) stay there. With
      "16-mixed" a ``ShardedGradScaler`` scales the loss and skips a step on every rank when any rank finds inf/NaN.

    Give ``mixed_precision_policy()`` to ``fully_shard(..., mp_policy=...)``.
    """

    def __init__(
        self,
        precision: ShardedPrecisionName,
        device_type: AutocastDeviceType = "cpu",
        scaler: ShardedGradScaler | None = None,
    ) -> None:
        super().__init__(precision, what="FSDP precision")
        check_choice("device type", device_type, AUTOCAST_DEVICE_TYPES)
        if scaler is not None and precision != "16-mixed":
            raise ValueError(
                f"precision={precision!r} takes no gradient scaler, got scaler={scaler!r}."
                " Pass scaler=None, or use precision='16-mixed'."
            )
        if scaler is None and precision == "16-mixed":
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            scaler = ShardedGradScaler(device=device_type)
        self.device_type = device_type
        self.scaler = scaler
        self._mixed = precision.endswith("-mixed")

    def mixed_precision_policy(self) -> MixedPrecisionPolicy:
        """The policy to pass to ``fully_shard(module, mp_policy=...)``."""
        try:
            from torch.distributed.fsdp import MixedPrecisionPolicy
        except ImportError:  # torch < 2.6 keeps FSDP2 under its original name
            from torch.distributed._composable.fsdp import MixedPrecisionPolicy

        if self._mixed:
            return MixedPrecisionPolicy(param_dtype=self._dtype, reduce_dtype=torch.float32)
        if self._true_half:
            return MixedPrecisionPolicy(param_dtype=self._dtype, reduce_dtype=self._dtype)
        return MixedPrecisionPolicy()

    # -- forward: nothing to do for 32-true; the other hooks come from ShardedPrecision and GradScalerHooks ----------
    @property
    @override
    def needs_forward_context(self) -> bool:
        return self.precision != "32-true"

    @override
    def forward_context(self) -> AbstractContextManager[Any]:
        if self._mixed:
            return torch.autocast(self.device_type, dtype=self._dtype)
        return default_dtype(self._dtype) if self._true_half else nullcontext()

    @override
    def convert_input(self, data: Any) -> Any:
        # mixed: the root module is float32 and FSDP casts the inputs to the parameter dtype itself
        return convert_floating_tensors(data, self._dtype if self._true_half else output_dtype())

    @override
    def __repr__(self) -> str:
        return f"{type(self).__name__}(precision={self.precision!r}, device_type={self.device_type!r})"
