"""fabric-strategies: how a model is placed, wrapped and synchronised across devices and processes.

The DeepSpeed, FSDP, model-parallel and XLA names are imported on first access (``fabric_strategies.FSDPStrategy``
imports ``fabric_strategies.fsdp`` then), which keeps them out of ``import fabric_strategies``.
"""

from typing import TYPE_CHECKING

from fabric_strategies.async_checkpoint import AsyncSave, save_state, wait_for_saves
from fabric_strategies.base import Strategy, unwrap_module
from fabric_strategies.checkpoint import MissingStateKeyError
from fabric_strategies.collectives import Collective, SingleDeviceCollective, TorchCollective
from fabric_strategies.collectives.functional import all_gather_tensor, all_reduce_tensor, gather_all_tensors
from fabric_strategies.ddp import DDPStrategy
from fabric_strategies.dp import DataParallelStrategy
from fabric_strategies.launchers import (
    Launcher,
    MultiprocessingLauncher,
    ProcessFailedError,
    RemoteTraceback,
    SubprocessScriptLauncher,
)
from fabric_strategies.parallel import ParallelStrategy
from fabric_strategies.process_group import DEFAULT_TIMEOUT, default_process_group_backend, start_store_server
from fabric_strategies.registry import STRATEGY_REGISTRY, resolve_strategy_name
from fabric_strategies.shared_filesystem import is_shared_filesystem
from fabric_strategies.single_device import SingleDeviceStrategy
from fabric_strategies.teardown import call_at_exit, destroy_process_group_cleanly, release_ddp_wrapper
from fabric_utils import names_on_access

if TYPE_CHECKING:
    from fabric_strategies.deepspeed import DeepSpeedConfig, DeepSpeedStrategy
    from fabric_strategies.fsdp import (
        FSDPStrategy,
        ShardedStrategy,
        UnsafeCheckpointError,
        consolidate_sharded_checkpoint,
        read_sharded_checkpoint,
    )
    from fabric_strategies.model_parallel import ModelParallelStrategy
    from fabric_strategies.xla import SingleDeviceXLAStrategy, XLAFSDPStrategy, XLALauncher, XLAStrategy

#: public names whose module is imported on first access
_ON_ACCESS = {
    "DeepSpeedConfig": "fabric_strategies.deepspeed",
    "DeepSpeedStrategy": "fabric_strategies.deepspeed",
    "FSDPStrategy": "fabric_strategies.fsdp",
    "ShardedStrategy": "fabric_strategies.fsdp",
    "UnsafeCheckpointError": "fabric_strategies.fsdp",
    "consolidate_sharded_checkpoint": "fabric_strategies.fsdp",
    "read_sharded_checkpoint": "fabric_strategies.fsdp",
    "ModelParallelStrategy": "fabric_strategies.model_parallel",
    "SingleDeviceXLAStrategy": "fabric_strategies.xla",
    "XLAFSDPStrategy": "fabric_strategies.xla",
    "XLALauncher": "fabric_strategies.xla",
    "XLAStrategy": "fabric_strategies.xla",
}


__getattr__, __dir__ = names_on_access(__name__, _ON_ACCESS)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TIMEOUT",
    "STRATEGY_REGISTRY",
    "AsyncSave",
    "Collective",
    "DDPStrategy",
    "DataParallelStrategy",
    "DeepSpeedConfig",
    "DeepSpeedStrategy",
    "FSDPStrategy",
    "Launcher",
    "MissingStateKeyError",
    "ModelParallelStrategy",
    "MultiprocessingLauncher",
    "ParallelStrategy",
    "ProcessFailedError",
    "RemoteTraceback",
    "ShardedStrategy",
    "SingleDeviceCollective",
    "SingleDeviceStrategy",
    "SingleDeviceXLAStrategy",
    "Strategy",
    "SubprocessScriptLauncher",
    "TorchCollective",
    "UnsafeCheckpointError",
    "XLAFSDPStrategy",
    "XLALauncher",
    "XLAStrategy",
    "all_gather_tensor",
    "all_reduce_tensor",
    "call_at_exit",
    "consolidate_sharded_checkpoint",
    "default_process_group_backend",
    "destroy_process_group_cleanly",
    "gather_all_tensors",
    "is_shared_filesystem",
    "read_sharded_checkpoint",
    "release_ddp_wrapper",
    "resolve_strategy_name",
    "save_state",
    "start_store_server",
    "unwrap_module",
    "wait_for_saves",
]
