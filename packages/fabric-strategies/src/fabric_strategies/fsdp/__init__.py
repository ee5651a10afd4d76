"""FSDP2 sharding: ``FSDPStrategy``, the ``ShardedStrategy`` base it shares with ``ModelParallelStrategy``, and
sharded checkpoint helpers (``consolidate_sharded_checkpoint``)."""

from fabric_io import UnsafeCheckpointError
from fabric_strategies.fsdp.base import SHARDED_PRECISIONS, STATE_DICT_TYPES, ShardedStrategy, StateDictType
from fabric_strategies.fsdp.clip import clip_grad_norm, total_grad_norm
from fabric_strategies.fsdp.dcp_io import consolidate_sharded_checkpoint, read_sharded_checkpoint
from fabric_strategies.fsdp.mesh import SHARDING_STRATEGIES, ShardingStrategyName
from fabric_strategies.fsdp.strategy import FSDPStrategy
from fabric_strategies.fsdp.wrap import ModulePolicy, apply_activation_checkpointing

__all__ = [
    "SHARDED_PRECISIONS",
    "SHARDING_STRATEGIES",
    "STATE_DICT_TYPES",
    "FSDPStrategy",
    "ModulePolicy",
    "ShardedStrategy",
    "ShardingStrategyName",
    "StateDictType",
    "UnsafeCheckpointError",
    "apply_activation_checkpointing",
    "clip_grad_norm",
    "consolidate_sharded_checkpoint",
    "read_sharded_checkpoint",
    "total_grad_norm",
]
