"""The connector: user flags + ``FABRIC_*`` environment variables -> a resolved :class:`Plan` -> assembled objects.

Resolution is a set of pure functions (they read the environment mapping they are given and the hardware probes
of ``fabric_utils`` through each accelerator's ``is_available()``; they construct nothing). ``"auto"`` is answered
by the registries: each accelerator says whether it is available and its priority, each environment whether it
detects itself, each strategy which precision plugin it needs. :func:`build` then creates every part complete, in
the order accelerator -> cluster environment -> strategy -> precision -> checkpoint IO.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch

from fabric_accelerators import ACCELERATOR_REGISTRY, Accelerator, resolve_accelerator_name
from fabric_environments import ClusterEnvironment, detect_environment
from fabric_io import CheckpointIO
from fabric_precision import Precision, parse_precision
from fabric_strategies import STRATEGY_REGISTRY, ParallelStrategy, Strategy, resolve_strategy_name
from fabric_utils import check_num_nodes

AcceleratorName = Literal["auto", "cpu", "cuda", "gpu", "mps", "tpu", "xla"]
#: "auto" and every built-in strategy name (a test checks it against STRATEGY_REGISTRY, the one list of names)
StrategyName = Literal[
    "auto",
    "single_device",
    "dp",
    "ddp",
    "ddp_spawn",
    "ddp_fork",
    "ddp_notebook",
    "ddp_find_unused_parameters_true",
    "ddp_spawn_find_unused_parameters_true",
    "ddp_fork_find_unused_parameters_true",
    "ddp_notebook_find_unused_parameters_true",
    "deepspeed",
    "deepspeed_stage_1",
    "deepspeed_stage_1_offload",
    "deepspeed_stage_2",
    "deepspeed_stage_2_offload",
    "deepspeed_stage_3",
    "deepspeed_stage_3_offload",
    "deepspeed_stage_3_offload_nvme",
    "fsdp",
    "fsdp_cpu_offload",
    "model_parallel",
    "xla",
    "xla_fsdp",
    "single_xla",
]
#: a name (the built-in ones above, or any registered name) or an instance
AcceleratorFlag = Union[AcceleratorName, str, Accelerator]
StrategyFlag = Union[StrategyName, str, Strategy]
Plugin = Union[Precision, ClusterEnvironment, CheckpointIO]

ENV_ACCELERATOR = "FABRIC_ACCELERATOR"
ENV_STRATEGY = "FABRIC_STRATEGY"
ENV_DEVICES = "FABRIC_DEVICES"
ENV_NUM_NODES = "FABRIC_NUM_NODES"
ENV_PRECISION = "FABRIC_PRECISION"

#: the strategy "auto" picks for an accelerator (single process, several processes); others use the default pair
AUTO_STRATEGIES: dict[str, tuple[str, str]] = {"xla": ("single_xla", "xla"), "tpu": ("single_xla", "xla")}
DEFAULT_AUTO_STRATEGIES = ("single_device", "ddp")
INTERACTIVE_AUTO_STRATEGY = "ddp_fork"


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Everything the connector decided, before any object is built."""

    accelerator: str
    accelerator_class: type[Accelerator]
    accelerator_instance: Accelerator | None
    devices: Any
    parallel_devices: tuple[torch.device, ...]
    num_nodes: int
    strategy: str
    strategy_instance: Strategy | None
    precision: str
    precision_plugin: Precision | None
    cluster_environment: ClusterEnvironment | None
    checkpoint_io: CheckpointIO | None

    @property
    def num_processes(self) -> int:
        """Devices per node: the number of processes per node for every strategy but "dp"."""
        return len(self.parallel_devices)


@dataclass(frozen=True, kw_only=True)
class Assembled:
    """The objects :func:`build` created from a plan, each complete."""

    accelerator: Accelerator
    cluster_environment: ClusterEnvironment
    strategy: Strategy
    precision: Precision
    checkpoint_io: CheckpointIO | None


# -- flags and environment ---------------------------------------------------------------------------------------
def is_interactive() -> bool:
    """Whether Python runs interactively (a REPL or a notebook kernel)."""
    return hasattr(sys, "ps1") or bool(sys.flags.interactive)


def split_plugins(plugins: Any) -> tuple[Precision | None, ClusterEnvironment | None, CheckpointIO | None]:
    """Sort ``plugins`` (one object or a list) into at most one precision, environment and checkpoint IO."""
    if plugins is None:
        return None, None, None
    items = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    found: dict[type, list[Any]] = {Precision: [], ClusterEnvironment: [], CheckpointIO: []}
    for item in items:
        kinds = [kind for kind in found if isinstance(item, kind)]
        if not kinds:
            raise TypeError(
                f"Unknown plugin {item!r} of type {type(item).__name__}. Plugins must be a Precision, a"
                " ClusterEnvironment or a CheckpointIO (or a list of them)."
            )
        found[kinds[0]].append(item)
    for kind, given in found.items():
        if len(given) > 1:
            names = ", ".join(type(p).__name__ for p in given)
            raise ValueError(f"Received several {kind.__name__} plugins ({names}); pass at most one of each kind.")
    return (
        next(iter(found[Precision]), None),
        next(iter(found[ClusterEnvironment]), None),
        next(iter(found[CheckpointIO]), None),
    )


def merge_flag(
    flag: str, value: Any, *, default: Any, env_name: str, environ: Mapping[str, str], same: Callable[[Any, str], bool]
) -> Any:
    """The value of a flag once the ``FABRIC_*`` variable set by ``fabric run`` is taken into account.

    The environment fills a flag left at its default; an explicit value that contradicts it raises, naming both.
    """
    env_value = environ.get(env_name)
    if env_value is None or env_value == "":
        return value
    if _is_default(value, default):
        return env_value
    if same(value, env_value):
        return value
    shown = value if isinstance(value, (str, int, list, tuple)) or value is None else type(value).__name__
    raise ValueError(
        f"Fabric({flag}={shown!r}) conflicts with {env_name}={env_value!r}, which `fabric run` set from"
        f" --{flag.replace('_', '-')}. Remove `{flag}` from the Fabric(...) call or change the command line."
    )


def _is_default(value: Any, default: Any) -> bool:
    return value is default or (type(value) is type(default) and value == default)


def _same_text(value: Any, env_value: str) -> bool:
    return str(value).lower() == env_value.lower()


def _same_int(value: Any, env_value: str) -> bool:
    return env_value.strip().isdigit() and int(env_value) == value


def _same_accelerator(value: Any, env_value: str) -> bool:
    if isinstance(value, Accelerator):
        return env_value.lower() in _names_of(type(value), ACCELERATOR_REGISTRY)
    if _same_text(value, env_value):
        return True
    try:
        return resolve_accelerator_class(value)[1] is resolve_accelerator_class(env_value)[1]
    except ValueError:
        return False


def _same_strategy(value: Any, env_value: str) -> bool:
    if isinstance(value, Strategy):
        return env_value.lower() == "auto" or _instance_matches(value, env_value.lower())
    return _same_text(value, env_value)


def _instance_matches(strategy: Strategy, name: str) -> bool:
    """Whether a strategy instance is what the registry builds for ``name`` (same class, same registered options)."""
    if name not in STRATEGY_REGISTRY:
        return False
    entry = STRATEGY_REGISTRY.entry(name)
    if entry.factory is not type(strategy):
        return False
    return all(getattr(strategy, key) == value for key, value in entry.init_kwargs.items() if hasattr(strategy, key))


def _same_devices(value: Any, env_value: str) -> bool:
    return _devices_text(value) == _devices_text(env_value)


def _devices_text(devices: Any) -> str:
    if isinstance(devices, (list, tuple)):
        return ",".join(str(d) for d in devices) + ("," if len(devices) == 1 else "")
    return str(devices).strip().replace(" ", "").lower()


def _same_precision(value: Any, env_value: str) -> bool:
    return parse_precision(value) == parse_precision(env_value)


def _names_of(cls: type, registry: Any) -> set[str]:
    names = {name for name in registry if registry.get(name) is cls}
    own = getattr(cls, "name", "")
    return names | ({own} if own else set())


# -- accelerator -------------------------------------------------------------------------------------------------
def resolve_accelerator_class(flag: AcceleratorFlag) -> tuple[str, type[Accelerator]]:
    """``(name, class)`` for an accelerator flag; "auto" and "gpu" are answered by availability and priority."""
    if isinstance(flag, Accelerator):
        cls = type(flag)
        return (getattr(cls, "name", "") or cls.__name__.lower()), cls
    if not isinstance(flag, str):
        raise TypeError(
            f"accelerator={flag!r} must be a name or an Accelerator instance. Choose one of: auto, gpu,"
            f" {', '.join(ACCELERATOR_REGISTRY)}"
        )
    try:
        name = resolve_accelerator_name(flag.lower())
    except ValueError as err:
        raise as_written(err, flag) from None
    factory = ACCELERATOR_REGISTRY.get(name)
    if not (isinstance(factory, type) and issubclass(factory, Accelerator)):
        raise TypeError(f"The accelerator {name!r} is registered to {factory!r}, which is not an Accelerator class")
    return name, factory


def resolve_devices(accelerator: type[Accelerator], devices: Any) -> tuple[Any, tuple[torch.device, ...]]:
    """Normalise a ``devices`` request for ``accelerator``; return it with the device of each process."""
    if isinstance(devices, bool) or devices is None:
        raise TypeError(f"devices={devices!r} is invalid. Use 'auto', an int (-1 = all), a list of indices or '0,1'.")
    if isinstance(devices, str) and devices.strip().lower() == "auto":
        devices = accelerator.auto_device_count()
    parsed = accelerator.parse_devices(devices)
    return parsed, tuple(accelerator.get_parallel_devices(parsed))


def num_nodes_from_environment(text: str) -> int:
    """``FABRIC_NUM_NODES`` as set by ``fabric run``: the decimal digits of an int >= 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(
            f"{ENV_NUM_NODES}={text!r} is invalid: it must be an int >= 1 (set by `fabric run --num-nodes`)"
        )
    return int(text)


def as_written(err: ValueError, written: str) -> ValueError:
    """``err`` naming the value as the user wrote it: names are looked up lowercased, so messages show them so."""
    lowered = written.lower()
    if lowered == written or repr(lowered) not in str(err):
        return err
    return type(err)(str(err).replace(repr(lowered), repr(written), 1))


# -- strategy ----------------------------------------------------------------------------------------------------
def pick_strategy_name(
    flag: StrategyFlag, *, device_type: str, accelerator: str, num_devices: int, num_nodes: int, interactive: bool
) -> str:
    """The registry name a strategy flag stands for; "auto" depends on the accelerator and the process count.

    A named strategy that does not run on ``device_type`` is replaced by its registered fallback with a warning
    ("dp" on CPU becomes "ddp"), as the strategy registry answers.
    """
    if isinstance(flag, Strategy):
        return getattr(type(flag), "name", "") or type(flag).__name__
    if not isinstance(flag, str):
        raise TypeError(
            f"strategy={flag!r} must be a name or a Strategy instance."
            f" Choose one of: auto, {', '.join(STRATEGY_REGISTRY)}"
        )
    name = flag.lower()
    if name == "auto":
        single, several = AUTO_STRATEGIES.get(accelerator, DEFAULT_AUTO_STRATEGIES)
        if num_devices > 1 or num_nodes > 1:
            return INTERACTIVE_AUTO_STRATEGY if interactive and several == "ddp" else several
        return single
    if name not in STRATEGY_REGISTRY:
        raise ValueError(STRATEGY_REGISTRY.unknown_message(flag, extra_choices=("auto",)))
    try:
        return resolve_strategy_name(name, device_type)
    except ValueError as err:
        raise as_written(err, flag) from None


def strategy_class(name: str, instance: Strategy | None) -> type[Strategy]:
    if instance is not None:
        return type(instance)
    if name not in STRATEGY_REGISTRY:
        raise ValueError(STRATEGY_REGISTRY.unknown_message(name, extra_choices=("auto",)))
    factory = STRATEGY_REGISTRY.get(name)
    if not isinstance(factory, type):
        raise TypeError(f"The strategy {name!r} is registered to {factory!r}, which is not a Strategy class")
    return factory


def check_combination(
    *, accelerator: str, strategy: str, strategy_cls: type[Strategy], precision: str, num_devices: int, num_nodes: int
) -> None:
    """Refuse combinations that cannot work, naming the values involved."""
    parallel = issubclass(strategy_cls, ParallelStrategy)
    if accelerator == "mps" and parallel:
        raise ValueError(
            f"strategy={strategy!r} is not supported on the MPS accelerator, which has a single device. Use"
            " accelerator='cpu' for multi-process runs, or a single-device strategy on MPS."
        )
    if not parallel and (num_devices > 1 or num_nodes > 1):
        raise ValueError(
            f"strategy={strategy!r} runs on one device, but devices={num_devices} and num_nodes={num_nodes} were"
            " requested. Use strategy='ddp' (or another multi-device strategy), or devices=1."
        )
    supported = getattr(strategy_cls, "supported_precisions", None)
    if supported is not None and precision not in supported:
        raise ValueError(
            f"precision={precision!r} is not supported by strategy={strategy!r}. Choose one of: {', '.join(supported)}"
        )


# -- the plan ----------------------------------------------------------------------------------------------------
def resolve_plan(
    *,
    accelerator: AcceleratorFlag = "auto",
    strategy: StrategyFlag = "auto",
    devices: Any = "auto",
    num_nodes: int = 1,
    precision: Any = None,
    plugins: Any = None,
    environ: Mapping[str, str] | None = None,
    interactive: bool | None = None,
) -> Plan:
    """Resolve user flags and ``FABRIC_*`` variables into a :class:`Plan`. Raises ``ValueError``/``TypeError``."""
    environ = os.environ if environ is None else environ
    interactive = is_interactive() if interactive is None else interactive
    precision_plugin, environment, checkpoint_io = split_plugins(plugins)

    accelerator = merge_flag(
        "accelerator", accelerator, default="auto", env_name=ENV_ACCELERATOR, environ=environ, same=_same_accelerator
    )
    strategy = merge_flag(
        "strategy", strategy, default="auto", env_name=ENV_STRATEGY, environ=environ, same=_same_strategy
    )
    devices = merge_flag("devices", devices, default="auto", env_name=ENV_DEVICES, environ=environ, same=_same_devices)
    num_nodes = merge_flag(
        "num_nodes", check_num_nodes(num_nodes), default=1, env_name=ENV_NUM_NODES, environ=environ, same=_same_int
    )
    if isinstance(num_nodes, str):
        num_nodes = num_nodes_from_environment(num_nodes)
    precision = merge_flag(
        "precision", precision, default=None, env_name=ENV_PRECISION, environ=environ, same=_same_precision
    )
    precision_name = resolve_precision_name(precision, precision_plugin)

    strategy_instance = strategy if isinstance(strategy, Strategy) else None
    if strategy_instance is not None and strategy_instance.accelerator is not None:
        accelerator = _accelerator_from_strategy(accelerator, strategy_instance.accelerator)
    accelerator_name, accelerator_cls = resolve_accelerator_class(accelerator)
    parsed_devices, parallel_devices = resolve_devices(accelerator_cls, devices)

    strategy_name = pick_strategy_name(
        strategy,
        device_type=parallel_devices[0].type if parallel_devices else accelerator_name,
        accelerator=accelerator_name,
        num_devices=len(parallel_devices),
        num_nodes=num_nodes,
        interactive=interactive,
    )
    strategy_cls = strategy_class(strategy_name, strategy_instance)
    check_combination(
        accelerator=accelerator_name,
        strategy=strategy_name,
        strategy_cls=strategy_cls,
        precision=precision_name,
        num_devices=len(parallel_devices),
        num_nodes=num_nodes,
    )
    return Plan(
        accelerator=accelerator_name,
        accelerator_class=accelerator_cls,
        accelerator_instance=accelerator if isinstance(accelerator, Accelerator) else None,
        devices=parsed_devices,
        parallel_devices=parallel_devices,
        num_nodes=num_nodes,
        strategy=strategy_name,
        strategy_instance=strategy_instance,
        precision=precision_name,
        precision_plugin=precision_plugin,
        cluster_environment=environment,
        checkpoint_io=checkpoint_io,
    )


def resolve_precision_name(precision: Any, plugin: Precision | None) -> str:
    """The canonical precision name from the flag and/or a precision plugin; both given and different raises."""
    if plugin is not None:
        if precision is not None and parse_precision(precision) != plugin.precision:
            raise ValueError(
                f"precision={precision!r} conflicts with the precision plugin {type(plugin).__name__}"
                f" ({plugin.precision!r}) passed in `plugins`. Pass only one of them."
            )
        return plugin.precision
    return parse_precision("32-true" if precision is None else precision)


def _accelerator_from_strategy(flag: AcceleratorFlag, given: Accelerator) -> AcceleratorFlag:
    if isinstance(flag, str) and flag.lower() == "auto":
        return given
    if resolve_accelerator_class(flag)[1] is not type(given):
        raise ValueError(
            f"accelerator={flag!r} conflicts with the strategy's own accelerator {type(given).__name__}. Pass only one."
        )
    return given


# -- building ----------------------------------------------------------------------------------------------------
def build(plan: Plan) -> Assembled:
    """Create every part of ``plan``, complete: accelerator -> environment -> strategy -> precision -> IO."""
    accelerator = plan.accelerator_instance or ACCELERATOR_REGISTRY.create(plan.accelerator)
    environment = plan.cluster_environment or detect_environment()
    environment.validate_ranks()  # before any rendezvous: a rank outside the world would wait there for ever
    environment.validate_settings(num_devices=plan.num_processes, num_nodes=plan.num_nodes)
    strategy = plan.strategy_instance or STRATEGY_REGISTRY.create(plan.strategy)
    strategy.complete(
        accelerator=accelerator,
        checkpoint_io=plan.checkpoint_io,
        cluster_environment=environment,
        parallel_devices=list(plan.parallel_devices),
        num_nodes=plan.num_nodes,
    )
    precision = plan.precision_plugin or strategy.default_precision(plan.precision)
    strategy.complete(precision=precision)
    return Assembled(
        accelerator=strategy.accelerator or accelerator,
        cluster_environment=environment,
        strategy=strategy,
        precision=strategy.precision,
        checkpoint_io=plan.checkpoint_io,
    )
