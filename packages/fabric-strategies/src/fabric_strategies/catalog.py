"""Every built-in strategy name: the class it builds, its one-line description and its options.

This table is the one list of strategy names: ``STRATEGY_REGISTRY`` registers each of them (a class is imported when
its name is first looked up, so ``import fabric_strategies`` imports no DeepSpeed, FSDP or XLA module), a subclass of
a built-in class registers under its names through ``register_strategies``, and fabric-core's ``StrategyName`` is
checked against it by a test.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from fabric_utils import Registry


class ListedStrategy(NamedTuple):
    """A registry name, the class it builds (``"module:Class"``), its one-line description and its options."""

    name: str
    target: str
    description: str
    options: dict[str, Any]


_DDP = "fabric_strategies.ddp:DDPStrategy"
_DEEPSPEED = "fabric_strategies.deepspeed.strategy:DeepSpeedStrategy"
_FSDP = "fabric_strategies.fsdp.strategy:FSDPStrategy"

#: the ways ddp starts its processes; each also has a "<name>_find_unused_parameters_true" variant
_DDP_LAUNCHES: tuple[ListedStrategy, ...] = (
    ListedStrategy(
        "ddp",
        _DDP,
        "DistributedDataParallel; the script is run again for each extra local process.",
        {"start_method": "popen"},
    ),
    ListedStrategy(
        "ddp_spawn",
        _DDP,
        "DistributedDataParallel in processes started with multiprocessing 'spawn'.",
        {"start_method": "spawn"},
    ),
    ListedStrategy(
        "ddp_fork",
        _DDP,
        "DistributedDataParallel in processes forked from this one (no CUDA before launch).",
        {"start_method": "fork"},
    ),
    ListedStrategy(
        "ddp_notebook",
        _DDP,
        "ddp_fork for notebooks and the REPL: the launched function runs in forked processes.",
        {"start_method": "fork"},
    ),
)


def _finding_unused_parameters(listed: ListedStrategy) -> ListedStrategy:
    """``listed`` (a ddp name) with ``find_unused_parameters=True``."""
    return ListedStrategy(
        f"{listed.name}_find_unused_parameters_true",
        listed.target,
        f"{listed.name} with find_unused_parameters=True, for models whose forward skips some parameters.",
        {**listed.options, "find_unused_parameters": True},
    )


LISTED_STRATEGIES: tuple[ListedStrategy, ...] = (
    ListedStrategy(
        "single_device",
        "fabric_strategies.single_device:SingleDeviceStrategy",
        "One process on one device (the CPU unless a device is given or completed).",
        {},
    ),
    ListedStrategy(
        "dp",
        "fabric_strategies.dp:DataParallelStrategy",
        "One process; each batch is split over several CUDA GPUs with torch.nn.DataParallel (CUDA only).",
        {},
    ),
    *_DDP_LAUNCHES,
    *(_finding_unused_parameters(listed) for listed in _DDP_LAUNCHES),
    ListedStrategy(
        "deepspeed", _DEEPSPEED, "DeepSpeed with its default ZeRO stage 2 (optimizer states and gradients sharded).", {}
    ),
    ListedStrategy(
        "deepspeed_stage_1",
        _DEEPSPEED,
        "DeepSpeed ZeRO stage 1: optimizer states sharded across processes.",
        {"stage": 1},
    ),
    ListedStrategy(
        "deepspeed_stage_1_offload",
        _DEEPSPEED,
        "DeepSpeed ZeRO stage 1 with optimizer states offloaded to CPU memory.",
        {"stage": 1, "offload_optimizer": True},
    ),
    ListedStrategy(
        "deepspeed_stage_2", _DEEPSPEED, "DeepSpeed ZeRO stage 2: optimizer states and gradients sharded.", {"stage": 2}
    ),
    ListedStrategy(
        "deepspeed_stage_2_offload",
        _DEEPSPEED,
        "DeepSpeed ZeRO stage 2 with optimizer states offloaded to CPU memory.",
        {"stage": 2, "offload_optimizer": True},
    ),
    ListedStrategy(
        "deepspeed_stage_3",
        _DEEPSPEED,
        "DeepSpeed ZeRO stage 3: optimizer states, gradients and parameters sharded.",
        {"stage": 3},
    ),
    ListedStrategy(
        "deepspeed_stage_3_offload",
        _DEEPSPEED,
        "DeepSpeed ZeRO stage 3 with optimizer states and parameters offloaded to CPU memory.",
        {"stage": 3, "offload_optimizer": True, "offload_parameters": True},
    ),
    ListedStrategy(
        "deepspeed_stage_3_offload_nvme",
        _DEEPSPEED,
        "DeepSpeed ZeRO stage 3 with optimizer states and parameters offloaded to NVMe (ZeRO-Infinity).",
        {
            "stage": 3,
            "offload_optimizer": True,
            "offload_parameters": True,
            "offload_optimizer_device": "nvme",
            "offload_params_device": "nvme",
        },
    ),
    ListedStrategy(
        "fsdp", _FSDP, "Fully sharded data parallel with FSDP2: parameters, gradients and optimizer state sharded.", {}
    ),
    ListedStrategy(
        "fsdp_cpu_offload",
        _FSDP,
        "fsdp with parameters, gradients and optimizer state offloaded to CPU memory.",
        {"cpu_offload": True},
    ),
    ListedStrategy(
        "model_parallel",
        "fabric_strategies.model_parallel:ModelParallelStrategy",
        "Tensor parallelism + FSDP2 on a 2-D device mesh; needs ModelParallelStrategy(parallelize_fn).",
        {},
    ),
    ListedStrategy(
        "xla",
        "fabric_strategies.xla.strategy:XLAStrategy",
        "Data-parallel training on XLA devices (TPUs), one process per device.",
        {},
    ),
    ListedStrategy(
        "xla_fsdp",
        "fabric_strategies.xla.fsdp:XLAFSDPStrategy",
        "Parameters, gradients and optimizer states sharded across XLA devices (torch_xla's FSDP).",
        {},
    ),
    ListedStrategy(
        "single_xla",
        "fabric_strategies.xla.single_device:SingleDeviceXLAStrategy",
        "One process on one XLA device (the first unless a device or index is given).",
        {},
    ),
)


def register_listed(registry: Registry[Any]) -> None:
    """Add every listed name to ``registry``; each class is imported when its name is first looked up."""
    for listed in LISTED_STRATEGIES:
        registry.register_deferred(listed.name, listed.target, description=listed.description, **listed.options)


def listed_base(cls: type) -> type | None:
    """The built-in class whose listed names ``cls`` registers under: itself when listed, else the nearest listed
    class it extends as long as it keeps that class's ``name`` (a subclass with a ``name`` of its own has its own)."""
    for base in cls.__mro__:
        if any(listed.target == f"{base.__module__}:{base.__qualname__}" for listed in LISTED_STRATEGIES):
            return base if base is cls or getattr(cls, "name", None) == getattr(base, "name", None) else None
    return None


def register_listed_class(registry: Registry[Any], cls: type, *, listed_as: type) -> None:
    """Register ``cls`` under the names listed for ``listed_as`` (``cls`` itself or the built-in class it extends)."""
    target = f"{listed_as.__module__}:{listed_as.__qualname__}"
    for listed in LISTED_STRATEGIES:
        if listed.target == target:
            registry.register(listed.name, cls, description=listed.description, **listed.options)
