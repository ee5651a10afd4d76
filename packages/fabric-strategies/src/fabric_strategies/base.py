"""The ``Strategy`` base: how a model is placed, wrapped, synchronised and checkpointed across processes."""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.nn import DataParallel, Module
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from fabric_accelerators import ACCELERATOR_REGISTRY, Accelerator
from fabric_environments import ClusterEnvironment
from fabric_io import CheckpointIO, TorchCheckpointIO
from fabric_precision import Precision, precision_plugin
from fabric_strategies.catalog import listed_base, register_listed_class
from fabric_strategies.checkpoint import StateFilter, loading, restore_state, to_checkpoint
from fabric_strategies.checkpoint_read import read_checkpoint
from fabric_strategies.collectives.functional import local_reduce
from fabric_strategies.init_context import SkipParameterInit
from fabric_strategies.launchers.base import Launcher
from fabric_utils import PathLike, check_clip_threshold, check_norm_type, check_reduce_op, move_data_to_device


def unwrap_module(module: Module) -> Module:
    """The module inside ``DistributedDataParallel``/``DataParallel`` wrappers and ``torch.compile``'s
    ``OptimizedModule`` (the module itself otherwise)."""
    while True:
        if isinstance(module, (DistributedDataParallel, DataParallel)):
            module = module.module
        elif _is_compiled(module):
            module = module._orig_mod  # type: ignore[assignment]
        else:
            return module


def _is_compiled(module: Module) -> bool:
    # torch.compile's wrapper lives in torch._dynamo (heavy to import); nothing is compiled before it is imported
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return eval_frame is not None and isinstance(module, eval_frame.OptimizedModule)


def _clean_key(key: str) -> str:
    """A state-dict key without the ``_orig_mod`` parts that compiled submodules add (``block._orig_mod.w``)."""
    return ".".join(part for part in key.split(".") if part != "_orig_mod")


def _clean_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``state_dict`` with the keys an uncompiled model has (a model with compiled blocks adds ``_orig_mod.``)."""
    if not any("_orig_mod" in key for key in state_dict):
        return state_dict  # type: ignore[return-value]
    return {_clean_key(key): value for key, value in state_dict.items()}


def _load_into(module: Module, state_dict: Mapping[str, Any], strict: bool) -> Any:
    """``module.load_state_dict`` that accepts keys with or without compiled blocks' ``_orig_mod.`` parts."""
    own = module.state_dict(keep_vars=True).keys()
    if any("_orig_mod" in key for key in (*state_dict, *own)):
        names = {_clean_key(key): key for key in own}
        state_dict = {names.get(_clean_key(key), key): value for key, value in state_dict.items()}
    return module.load_state_dict(state_dict, strict=strict)


def _check_part(value: Any, expected: type, name: str) -> None:
    if value is not None and not isinstance(value, expected):
        raise TypeError(f"`{name}` must be a {expected.__name__} instance, got {value!r}")


@dataclass(frozen=True)
class Parts:
    """The parts ``Strategy.complete`` hands to ``Strategy._complete``: what the connector built for the user's flags.

    ``None`` means "not given"; a strategy takes only the parts it has no value for and ignores those it has no use
    for (a cluster environment for a single device).
    """

    accelerator: Accelerator | None = None
    precision: Precision | None = None
    checkpoint_io: CheckpointIO | None = None
    cluster_environment: ClusterEnvironment | None = None
    parallel_devices: list[torch.device] | None = None
    num_nodes: int | None = None


class Strategy(ABC):
    """Where a model runs and how its processes cooperate. Its parts (accelerator, precision, checkpoint IO) are
    given to the constructor or filled in later by ``complete()``; a part that is set is never replaced.
    A subclass that takes more parts, or checks them, overrides ``_complete(parts)`` (and calls ``super()``), and
    one that accepts only some precision plugins overrides ``_check_precision_plugin``.

    The base class describes a single process; ``ParallelStrategy`` adds process groups.
    """

    #: registry name of the default configuration
    name: ClassVar[str] = ""
    #: the precisions (``Precision.precision`` names) this strategy works with; ``None``: any
    supported_precisions: ClassVar[tuple[str, ...] | None] = None
    #: the device types (``torch.device.type``) this strategy runs on; ``None``: any
    supported_device_types: ClassVar[tuple[str, ...] | None] = None
    #: the registry name to use instead on other device types (see ``resolve_strategy_name``); ``None``: an error
    fallback_strategy: ClassVar[str | None] = None

    def __init__(
        self,
        accelerator: Accelerator | None = None,
        checkpoint_io: CheckpointIO | None = None,
        precision: Precision | None = None,
    ) -> None:
        self._check_precision_plugin(precision)
        _check_part(accelerator, Accelerator, "accelerator")
        _check_part(checkpoint_io, CheckpointIO, "checkpoint_io")
        _check_part(precision, Precision, "precision")
        if precision is not None:
            self._check_precision_supported(precision.precision)
        self._accelerator = accelerator
        self._checkpoint_io = checkpoint_io
        self._precision = precision
        self._fallback_checkpoint_io: CheckpointIO | None = None
        self._fallback_precision: Precision | None = None
        self._launcher: Launcher | None = None
        self._launcher_configured = False

    # -- parts ---------------------------------------------------------------------------------------------------
    @property
    def accelerator(self) -> Accelerator | None:
        return self._accelerator

    @property
    def checkpoint_io(self) -> CheckpointIO:
        if self._checkpoint_io is not None:
            return self._checkpoint_io
        if self._fallback_checkpoint_io is None:
            self._fallback_checkpoint_io = TorchCheckpointIO()
        return self._fallback_checkpoint_io

    @property
    def precision(self) -> Precision:
        if self._precision is not None:
            return self._precision
        if self._fallback_precision is None:
            self._fallback_precision = Precision()
        return self._fallback_precision

    @property
    def launcher(self) -> Launcher | None:
        """What starts the processes; ``None`` when nothing needs starting (one process, or an external launcher)."""
        if not self._launcher_configured:
            self._launcher = self._configure_launcher()
            self._launcher_configured = True
        return self._launcher

    def _configure_launcher(self) -> Launcher | None:
        return None

    def complete(
        self,
        *,
        accelerator: Accelerator | None = None,
        precision: Precision | None = None,
        checkpoint_io: CheckpointIO | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        parallel_devices: list[torch.device] | None = None,
        num_nodes: int | None = None,
    ) -> None:
        """Fill the parts the user did not give; never overrides a part that is set. Called by the connector.

        Parts a strategy has no use for (a cluster environment for a single device) are ignored.
        """
        self._complete(
            Parts(
                accelerator=accelerator,
                precision=precision,
                checkpoint_io=checkpoint_io,
                cluster_environment=cluster_environment,
                parallel_devices=parallel_devices,
                num_nodes=num_nodes,
            )
        )

    def _complete(self, parts: Parts) -> None:
        """Take the accelerator, precision and checkpoint IO of ``parts`` where none is set (see ``complete``)."""
        if self._precision is None:
            self._check_precision_plugin(parts.precision)
        _check_part(parts.accelerator, Accelerator, "accelerator")
        _check_part(parts.checkpoint_io, CheckpointIO, "checkpoint_io")
        _check_part(parts.precision, Precision, "precision")
        if self._accelerator is None and parts.accelerator is not None:
            self._accelerator = parts.accelerator
        if self._precision is None and parts.precision is not None:
            self._check_precision_supported(parts.precision.precision)
            self._precision = parts.precision
        if self._checkpoint_io is None and parts.checkpoint_io is not None:
            self._checkpoint_io = parts.checkpoint_io
        self._launcher_configured = False

    def _check_precision_plugin(self, precision: Precision | None) -> None:  # noqa: B027 - most accept any plugin
        """Raise ``TypeError`` for a precision plugin this strategy cannot use; called with a given or completed one."""

    def default_precision(self, name: str) -> Precision:
        """The precision plugin this strategy uses for the precision ``name`` (e.g. "bf16-mixed")."""
        plugin = precision_plugin(name, device_type=self.root_device.type)
        self._check_precision_supported(plugin.precision)
        return plugin

    def _check_precision_supported(self, name: str) -> None:
        if self.supported_precisions is not None and name not in self.supported_precisions:
            raise ValueError(
                f"{type(self).__name__} does not support precision {name!r}."
                f" Choose one of: {', '.join(self.supported_precisions)}"
            )

    def _resolved_accelerator(self) -> Accelerator:
        """The accelerator, filled in from the root device's type when nobody gave one."""
        if self._accelerator is None:
            self._accelerator = ACCELERATOR_REGISTRY.create(self.root_device.type)
        return self._accelerator

    # -- where this process runs ---------------------------------------------------------------------------------
    @property
    @abstractmethod
    def root_device(self) -> torch.device:
        """The device of this process."""

    @property
    def world_size(self) -> int:
        return 1

    @property
    def global_rank(self) -> int:
        return 0

    @property
    def local_rank(self) -> int:
        return 0

    @property
    def node_rank(self) -> int:
        return 0

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any] | None:
        """Keyword arguments for a ``DistributedSampler``; ``None`` when the data need not be split."""
        return None

    def setup_environment(self) -> None:
        """Prepare this process after launch: the device (and, for parallel strategies, the process group)."""
        self._resolved_accelerator().setup_device(self.root_device)

    # -- modules, optimizers, data -------------------------------------------------------------------------------
    def setup_module_and_optimizers(
        self, module: Module, optimizers: list[Optimizer]
    ) -> tuple[Module, list[Optimizer]]:
        """Set up a module and its optimizers together (strategies that shard both override this)."""
        module = self.setup_module(module)
        return module, [self.setup_optimizer(optimizer) for optimizer in optimizers]

    def setup_module(self, module: Module) -> Module:
        """Wrap the module for this strategy (DDP, ...); the base returns it unchanged."""
        return module

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        return optimizer

    def module_to_device(self, module: Module) -> None:
        module.to(self.root_device)

    def module_init_context(self, empty_init: bool | None = None) -> AbstractContextManager[Any]:
        """Context for instantiating a module: on the root device, in the precision's dtype.

        ``empty_init=True`` skips the parameters' initialisation (their values are undefined until loaded).
        """
        stack = ExitStack()
        stack.enter_context(self.root_device)
        if empty_init:
            stack.enter_context(SkipParameterInit())
        stack.enter_context(self.precision.module_init_context())
        return stack

    def tensor_init_context(self) -> AbstractContextManager[Any]:
        """Context for creating tensors on the root device in the precision's dtype."""
        stack = ExitStack()
        stack.enter_context(self.root_device)
        stack.enter_context(self.precision.tensor_init_context())
        return stack

    def process_dataloader(self, dataloader: DataLoader) -> DataLoader:
        return dataloader

    def batch_to_device(self, batch: Any, device: torch.device | None = None) -> Any:
        return move_data_to_device(batch, device or self.root_device)

    # -- training step -------------------------------------------------------------------------------------------
    def backward(self, tensor: Tensor, module: Module | None, *args: Any, **kwargs: Any) -> None:
        """Backward through the precision plugin (which may scale the loss first)."""
        precision = self.precision
        tensor = precision.pre_backward(tensor, module)
        precision.backward(tensor, module, *args, **kwargs)
        precision.post_backward(tensor, module)

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        return self.precision.optimizer_step(optimizer, **kwargs)

    def no_backward_sync(self, module: Module, enabled: bool) -> AbstractContextManager[Any]:
        """Skip the gradient synchronisation of backward passes inside the context; a single process has none."""
        return nullcontext()

    def clip_gradients_norm(
        self,
        module: Module,
        optimizer: Optimizer,
        max_norm: float | int,
        norm_type: float | int = 2.0,
        error_if_nonfinite: bool = True,
    ) -> Tensor:
        """Clip the gradients of the optimizer's parameters to a total norm of ``max_norm``; return the norm."""
        check_clip_threshold("max_norm", max_norm)
        check_norm_type(norm_type)
        self.precision.unscale_gradients(optimizer)
        parameters = list(self.precision.main_params(optimizer))
        return torch.nn.utils.clip_grad_norm_(
            parameters, max_norm, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite
        )

    def clip_gradients_value(self, module: Module, optimizer: Optimizer, clip_val: float | int) -> None:
        """Clamp every gradient of the optimizer's parameters to ``[-clip_val, clip_val]``."""
        check_clip_threshold("clip_val", clip_val)
        self.precision.unscale_gradients(optimizer)
        torch.nn.utils.clip_grad_value_(list(self.precision.main_params(optimizer)), clip_val)

    # -- collectives (one process: local answers, arguments still validated) --------------------------------------
    def all_reduce(self, tensor: Tensor | float, group: Any | None = None, reduce_op: Any = "mean") -> Tensor:
        check_reduce_op(reduce_op)
        return local_reduce(
            tensor if isinstance(tensor, Tensor) else torch.tensor(tensor, device=self.root_device), reduce_op
        )

    def all_gather(self, tensor: Tensor, group: Any | None = None, sync_grads: bool = False) -> Tensor | list[Tensor]:
        """The tensor of every process stacked along a new first dimension; with one process, ``tensor`` itself."""
        return tensor

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if src != 0:
            raise ValueError(f"src={src!r} does not exist: this strategy runs a single process (rank 0)")
        return obj

    def barrier(self, name: str | None = None) -> None:
        """Wait for every process; with a single process there is nobody to wait for."""
        return None

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        """Combine a decision across processes: all must agree (``all=True``) or any may decide."""
        return bool(decision)

    # -- state -----------------------------------------------------------------------------------------------------
    def get_module_state_dict(self, module: Module) -> dict[str, Any]:
        return _clean_state_dict(unwrap_module(module).state_dict())

    def load_module_state_dict(self, module: Module, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        _load_into(unwrap_module(module), state_dict, strict)

    def get_optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def save_checkpoint(
        self,
        path: PathLike,
        state: Mapping[str, Any],
        storage_options: Any | None = None,
        filter: StateFilter | None = None,
    ) -> None:
        """Save ``state``; modules, optimizers and stateful objects become state dicts. Global rank 0 writes.

        Returns once every process may read the checkpoint: a parallel strategy's save ends with its one barrier."""
        checkpoint = to_checkpoint(self, state, filter)
        if self.is_global_zero:
            self.checkpoint_io.save_checkpoint(checkpoint, path, storage_options=storage_options)

    def load_checkpoint(
        self,
        path: PathLike,
        state: Module | Optimizer | dict[str, Any] | None = None,
        strict: bool = True,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Restore the checkpoint at ``path`` into the objects of ``state``; return what ``state`` did not take.

        With a module or an optimizer as ``state``, the file holds that object's raw state dict. ``weights_only``
        defaults to True here, whatever the default of a custom checkpoint IO.
        """
        weights_only = True if weights_only is None else weights_only
        checkpoint = read_checkpoint(self, path, state, weights_only)  # a file, or a sharded directory read whole
        if isinstance(state, Module):
            with loading(path, state):
                self.load_module_state_dict(state, checkpoint, strict=strict)
            return {}
        if isinstance(state, Optimizer):
            with loading(path, state):
                state.load_state_dict(checkpoint)
            return {}
        if not state:
            return checkpoint
        if not isinstance(state, dict):
            raise TypeError(f"`state` must be a module, an optimizer or a dict, got {type(state).__name__}")
        return restore_state(self, state, checkpoint, strict, path=path)

    # -- end -------------------------------------------------------------------------------------------------------
    def teardown(self) -> None:
        """Release what the strategy set up: precision, checkpoint IO and accelerator."""
        self.precision.teardown()
        self.checkpoint_io.teardown()
        if self._accelerator is not None:
            self._accelerator.teardown()

    @classmethod
    def register_strategies(cls, registry: Any) -> None:
        """Register this strategy's names in ``registry`` (a ``fabric_utils.Registry``): those listed for the built-in
        class it is or extends (a ``DDPStrategy`` subclass takes every ddp name), else its own ``name``."""
        listed_as = listed_base(cls)
        if listed_as is not None:
            register_listed_class(registry, cls, listed_as=listed_as)
        elif cls.name:
            registry.register(cls.name, cls, description=_first_line(cls.__doc__))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(accelerator={self._accelerator!r}, precision={self.precision!r})"


def _first_line(doc: str | None) -> str:
    return next((line.strip() for line in (doc or "").strip().splitlines() if line.strip()), "")
