"""The built-in strategy names whose modules load on first use: DeepSpeed, FSDP, model parallel and XLA.

Their names, descriptions and options are listed here, so ``STRATEGY_REGISTRY`` can offer them (and list them in
errors and ``fabric env``) while ``import fabric_strategies`` imports none of their modules.
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


_DEEPSPEED = "fabric_strategies.deepspeed.strategy:DeepSpeedStrategy"
_FSDP = "fabric_strategies.fsdp.strategy:FSDPStrategy"

LISTED_STRATEGIES: tuple[ListedStrategy, ...] = (
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


def register_listed_class(registry: Registry[Any], cls: type, *, listed_as: type) -> None:
    """Register ``cls`` under the names listed for ``listed_as`` (``cls`` itself or the built-in class it extends)."""
    target = f"{listed_as.__module__}:{listed_as.__qualname__}"
    for listed in LISTED_STRATEGIES:
        if listed.target == target:
            registry.register(listed.name, cls, description=listed.description, **listed.options)
