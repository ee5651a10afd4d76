"""fabric-core: ``Fabric``, the wrappers it returns, the data helpers and the ``fabric`` command line."""

from fabric_core.callbacks import CALLBACKS_GROUP, HookCaller
from fabric_core.connector import Plan, build, resolve_plan
from fabric_core.data import DistributedSamplerWrapper, ResumableDistributedSampler, inject_distributed_sampler
from fabric_core.fabric import Fabric
from fabric_core.flops import PEAK_FLOPS, get_available_flops, measure_flops, peak_flops
from fabric_core.loader import FabricDataLoader
from fabric_core.throughput import Throughput, ThroughputMonitor
from fabric_core.wrappers import FabricModule, FabricOptimizer, is_wrapped

__version__ = "0.1.0"

__all__ = [
    "CALLBACKS_GROUP",
    "PEAK_FLOPS",
    "DistributedSamplerWrapper",
    "Fabric",
    "FabricDataLoader",
    "FabricModule",
    "FabricOptimizer",
    "HookCaller",
    "Plan",
    "ResumableDistributedSampler",
    "Throughput",
    "ThroughputMonitor",
    "build",
    "get_available_flops",
    "inject_distributed_sampler",
    "is_wrapped",
    "measure_flops",
    "peak_flops",
    "resolve_plan",
]
