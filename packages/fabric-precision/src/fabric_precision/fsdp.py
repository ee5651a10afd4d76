"""Precision for FSDP2 (``torch.distributed.fsdp.fully_shard``): a ``MixedPrecisionPolicy`` plus the usual hooks."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer
from typing_extensions import override

from fabric_precision.amp import AUTOCAST_DEVICE_TYPES, AutocastDeviceType, scaled_step
from fabric_precision.base import (
    PRECISION_DTYPES,
    Precision,
    check_choice,
    convert_floating_tensors,
    default_dtype,
    output_dtype,
)
from fabric_utils import Optimizable, Steppable

if TYPE_CHECKING:
    from torch.distributed.fsdp import MixedPrecisionPolicy
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

ShardedPrecisionName = Literal["32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed"]
SHARDED_PRECISIONS: tuple[str, ...] = ("32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed")


class FSDPPrecision(Precision):
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
        check_choice("FSDP precision", precision, SHARDED_PRECISIONS)
        check_choice("device type", device_type, AUTOCAST_DEVICE_TYPES)
        if scaler is not None and precision != "16-mixed":
            raise ValueError(
                f"precision={precision!r} takes no gradient scaler, got scaler={scaler!r}."
                " Pass scaler=None, or use precision='16-mixed'."
            )
        if scaler is None and precision == "16-mixed":
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            scaler = ShardedGradScaler(device=device_type)
        self.precision = precision
        self.device_type = device_type
        self.scaler = scaler
        self._dtype = PRECISION_DTYPES[precision]
        self._mixed = precision.endswith("-mixed")
        self._true_half = precision in ("16-true", "bf16-true")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the forward and backward compute in."""
        return self._dtype

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

    # -- what the wrappers may skip: nothing to do for 32-true ----------------------------------------------------
    @property
    @override
    def needs_forward_context(self) -> bool:
        return self.precision != "32-true"

    @property
    @override
    def needs_input_conversion(self) -> bool:
        return self.precision != "32-true"

    @property
    @override
    def needs_output_conversion(self) -> bool:
        return self.precision != "32-true"

    # -- module and tensors ---------------------------------------------------------------------------------------
    @override
    def convert_module(self, module: Module) -> Module:
        return module.to(dtype=self._dtype) if self._true_half else module

    @override
    def tensor_init_context(self) -> AbstractContextManager[Any]:
        return default_dtype(self._dtype) if self._true_half else nullcontext()

    @override
    def module_init_context(self) -> AbstractContextManager[Any]:
        return self.tensor_init_context()

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
    def convert_output(self, data: Any) -> Any:
        return convert_floating_tensors(data, output_dtype())

    # -- backward and step ----------------------------------------------------------------------------------------
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

    # -- checkpoint -----------------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {} if self.scaler is None else self.scaler.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.scaler is not None:
            self.scaler.load_state_dict(state_dict)

    @override
    def __repr__(self) -> str:
        return f"{type(self).__name__}(precision={self.precision!r}, device_type={self.device_type!r})"
