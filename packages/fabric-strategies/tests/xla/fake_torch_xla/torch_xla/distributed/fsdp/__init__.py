"""Fake ``torch_xla.distributed.fsdp``: a wrapper that marks parameters as sharded and names its state like torch_xla.

Over mirror processes every shard equals the whole, so the "shards" are the full tensors and consolidation only
removes the wrapper prefixes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from torch_xla import _fake

_PREFIX = "_fsdp_wrapped_module."


def _auto_wrap(module: nn.Module, policy: Callable[..., bool], wrapper: Callable[..., nn.Module], kwargs: Any) -> None:
    for name, child in list(module.named_children()):
        _auto_wrap(child, policy, wrapper, kwargs)
        numel = sum(p.numel() for p in child.parameters())
        if policy(module=child, recurse=False, unwrapped_params=numel):
            setattr(module, name, wrapper(child, **kwargs))


class XlaFullyShardedDataParallel(nn.Module):
    def __init__(
        self,
        module: nn.Module,
        *args: Any,
        auto_wrap_policy: Callable[..., bool] | None = None,
        auto_wrapper_callable: Callable[..., nn.Module] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        _fake.record("XlaFullyShardedDataParallel", {"module": type(module).__name__, **kwargs})
        if auto_wrap_policy is not None:
            _auto_wrap(module, auto_wrap_policy, auto_wrapper_callable or XlaFullyShardedDataParallel, kwargs)
        self._fsdp_wrapped_module = module
        self.fake_kwargs = dict(kwargs)
        self.no_sync_active = False
        for parameter in module.parameters():
            parameter._is_sharded = True  # type: ignore[attr-defined]

    @property
    def module(self) -> nn.Module:
        return self._fsdp_wrapped_module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._fsdp_wrapped_module(*args, **kwargs)

    def get_shard_metadata(self) -> dict[str, Any]:
        state = _fake.state
        return {"world_size": state.world_size, "rank": state.global_ordinal, "shard_info": {}, "flatten_info": {}}

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        _fake.record("no_sync")
        self.no_sync_active = True
        try:
            yield
        finally:
            self.no_sync_active = False

    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0, groups: Any = None) -> Tensor:
        _fake.record("clip_grad_norm_", {"max_norm": max_norm, "norm_type": norm_type})
        return torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm, norm_type=norm_type)


def consolidate_sharded_state_dicts(state_dict_list: list[dict[str, Tensor]], shard_metadata: dict[str, Any]) -> Any:
    assert len(state_dict_list) == shard_metadata["world_size"], "one state dict per process"
    _fake.record("consolidate_sharded_state_dicts", len(state_dict_list))
    return OrderedDict((name.replace(_PREFIX, ""), value) for name, value in state_dict_list[0].items())


def checkpoint_module(module: nn.Module) -> nn.Module:
    _fake.record("checkpoint_module", type(module).__name__)
    module.fake_checkpointed = True  # type: ignore[assignment]
    return module
