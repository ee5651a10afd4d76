"""Fake ``torch_xla.distributed.fsdp.wrap``."""

from __future__ import annotations

from torch import nn


def transformer_auto_wrap_policy(
    module: nn.Module, recurse: bool, unwrapped_params: int, transformer_layer_cls: set[type[nn.Module]]
) -> bool:
    if recurse:
        return True
    return isinstance(module, tuple(transformer_layer_cls))
