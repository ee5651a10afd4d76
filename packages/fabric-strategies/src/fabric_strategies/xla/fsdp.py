"""``XLAFSDPStrategy``: fully sharded data parallelism on XLA devices (torch_xla's ``XlaFullyShardedDataParallel``)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from types import ModuleType
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer
from typing_extensions import override

from fabric_io import exists, isdir
from fabric_strategies.checkpoint import StateFilter
from fabric_strategies.inherited_parameters import takes_parameters_of
from fabric_strategies.parallel import PARTS_BUT_ENVIRONMENT
from fabric_strategies.xla import runtime
from fabric_strategies.xla.fsdp_checkpoint import check_full_load, load_shard, save_xla_fsdp_checkpoint
from fabric_strategies.xla.strategy import XLAStrategy
from fabric_utils import PathLike, check_clip_threshold, check_norm_type

StateDictType = Literal["sharded", "full"]
STATE_DICT_TYPES: tuple[str, ...] = get_args(StateDictType)
ModulePolicy = Iterable[type[Module]] | Callable[..., bool] | None


def _module_classes(name: str, value: Any) -> frozenset[type[Module]]:
    classes = frozenset(value)
    bad = [c for c in classes if not (isinstance(c, type) and issubclass(c, Module))]
    if bad:
        raise TypeError(f"{name} must hold torch.nn.Module subclasses, got {bad}")
    return classes


class XLAFSDPStrategy(XLAStrategy):
    """Parameters, gradients and optimizer states sharded across XLA devices (torch_xla's FSDP).

    Set the model up first and create its optimizer from the returned (sharded) model: ``model =
    fabric.setup_module(model)``, ``optimizer = fabric.setup_optimizers(Adam(model.parameters()))``.

    Args:
        auto_wrap_policy: module classes to wrap in their own FSDP unit (a set), or torch_xla's policy callable.
        activation_checkpointing_policy: module classes whose activations are recomputed in backward (they are
            wrapped in their own units too).
        state_dict_type: "sharded" (default): every process writes its shard of a checkpoint directory, which
            loads at the same world size; "full": the shards are consolidated into one file by rank 0 (model
            weights only), which loads into a model before it is set up.
        sequential_save: processes write their shards one after another (less host memory at once).
        **kwargs: passed to ``XlaFullyShardedDataParallel`` (``compute_dtype``, ``reshard_after_forward``...).
    """

    name: ClassVar[str] = "xla_fsdp"

    @takes_parameters_of(XLAStrategy, names=PARTS_BUT_ENVIRONMENT)
    def __init__(
        self,
        inherited: dict[str, Any],
        /,
        *,
        auto_wrap_policy: ModulePolicy = None,
        activation_checkpointing_policy: Iterable[type[Module]] | None = None,
        state_dict_type: StateDictType = "sharded",
        sequential_save: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**inherited, sync_module_states=False)
        if state_dict_type not in STATE_DICT_TYPES:
            raise ValueError(
                f"Unknown state_dict_type {state_dict_type!r}. Choose one of: {', '.join(STATE_DICT_TYPES)}"
            )
        if auto_wrap_policy is not None and not callable(auto_wrap_policy):
            auto_wrap_policy = _module_classes("auto_wrap_policy", auto_wrap_policy)
        self._auto_wrap_policy = auto_wrap_policy
        self._checkpointed = _module_classes("activation_checkpointing_policy", activation_checkpointing_policy or ())
        self._state_dict_type: StateDictType = state_dict_type
        self._sequential_save = bool(sequential_save)
        self._fsdp_kwargs = kwargs
        self._wrapped: list[tuple[Module, Module]] = []  # (the module given to setup_module, its FSDP wrapper)

    @property
    def state_dict_type(self) -> StateDictType:
        return self._state_dict_type

    @property
    def sequential_save(self) -> bool:
        return self._sequential_save

    @property
    def fsdp_kwargs(self) -> dict[str, Any]:
        return dict(self._fsdp_kwargs)

    # -- modules and optimizers ----------------------------------------------------------------------------------
    def _wrap_policy(self, wrap_module: ModuleType) -> Callable[..., bool] | None:
        policy = self._auto_wrap_policy
        if callable(policy):
            return policy
        classes = frozenset(policy or ()) | self._checkpointed
        if not classes:
            return None
        return functools.partial(wrap_module.transformer_auto_wrap_policy, transformer_layer_cls=set(classes))

    @override
    def setup_module_and_optimizers(
        self, module: Module, optimizers: list[Optimizer]
    ) -> tuple[Module, list[Optimizer]]:
        raise NotImplementedError(
            "XLAFSDPStrategy shards the model first, so its optimizer must be created from the sharded parameters:"
            " model = fabric.setup_module(model), then"
            " optimizer = fabric.setup_optimizers(Optimizer(model.parameters()))."
        )

    @override
    def setup_module(self, module: Module) -> Module:
        """Wrap the module in ``XlaFullyShardedDataParallel`` (with the auto-wrap and checkpointing policies)."""
        fsdp = runtime.xla_module("distributed.fsdp")
        if isinstance(module, fsdp.XlaFullyShardedDataParallel):
            wrapper: Module = module
        else:
            kwargs = dict(self._fsdp_kwargs)
            policy = self._wrap_policy(runtime.xla_module("distributed.fsdp.wrap"))
            if policy is not None:
                kwargs.setdefault("auto_wrap_policy", policy)
            if self._checkpointed:
                kwargs.setdefault(
                    "auto_wrapper_callable", functools.partial(_checkpointing_wrapper, tuple(self._checkpointed))
                )
            wrapper = fsdp.XlaFullyShardedDataParallel(module, **kwargs)
        self._wrapped.append((module, wrapper))
        return wrapper

    @override
    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        """Accept only optimizers over the sharded parameters (created after ``setup_module``)."""
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        if parameters and all(getattr(p, "_is_sharded", False) for p in parameters):
            return optimizer
        raise ValueError(
            f"The {type(optimizer).__name__} optimizer holds parameters of the model before it was sharded. Create it"
            " after setting the model up: model = fabric.setup_module(model), then"
            " fabric.setup_optimizers(Optimizer(model.parameters()))."
        )

    def wrapper_of(self, module: Module) -> Module | None:
        """The FSDP wrapper this strategy created for ``module`` (or ``module`` itself when it is one)."""
        for original, wrapper in self._wrapped:
            if module is original or module is wrapper:
                return wrapper
        return None

    def _require_wrapper(self, module: Module, action: str) -> Module:
        wrapper = self.wrapper_of(module)
        if wrapper is None:
            raise TypeError(
                f"{action} needs a model set up by XLAFSDPStrategy (wrapped in XlaFullyShardedDataParallel), got"
                f" {type(module).__name__}."
            )
        return wrapper

    # -- training step -------------------------------------------------------------------------------------------
    @override
    def optimizer_step(self, optimizer: Any, **kwargs: Any) -> Any:
        """Step the optimizer directly (FSDP already reduced the gradient shards), then run the lazy graph."""
        output = optimizer.step(**kwargs)
        runtime.sync()
        return output

    @override
    def no_backward_sync(self, module: Module, enabled: bool) -> AbstractContextManager[Any]:
        if not enabled:
            return nullcontext()
        return self._require_wrapper(module, "no_backward_sync").no_sync()  # type: ignore[no-any-return,operator]

    @override
    def clip_gradients_norm(
        self,
        module: Module,
        optimizer: Optimizer,
        max_norm: float | int,
        norm_type: float | int = 2.0,
        error_if_nonfinite: bool = True,
    ) -> Tensor:
        """Clip by the total norm across every shard (``XlaFullyShardedDataParallel.clip_grad_norm_``)."""
        check_clip_threshold("max_norm", max_norm)
        check_norm_type(norm_type)
        wrapper = self._require_wrapper(module, "clip_gradients")
        self.precision.unscale_gradients(optimizer)
        norm: Tensor = wrapper.clip_grad_norm_(max_norm=max_norm, norm_type=norm_type)  # type: ignore[operator]
        if error_if_nonfinite and not bool(torch.isfinite(norm).all()):  # asking forces the pending graph to run
            raise RuntimeError(
                f"The total norm of order {float(norm_type)} of the gradients is non-finite ({norm.item()}), so it"
                " cannot be clipped. Pass error_if_nonfinite=False to clip anyway."
            )
        return norm

    @override
    def clip_gradients_value(self, module: Module, optimizer: Optimizer, clip_val: float | int) -> None:
        raise NotImplementedError(
            "XLAFSDPStrategy clips gradients by norm only (across the shards): use clip_gradients(max_norm=...)."
        )

    # -- state -----------------------------------------------------------------------------------------------------
    @override
    def get_module_state_dict(self, module: Module) -> dict[str, Any]:
        """This process's shard of the model's state (the whole state for a model that is not wrapped)."""
        wrapper = self.wrapper_of(module)
        return (wrapper or module).state_dict()

    @override
    def load_module_state_dict(self, module: Module, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        (self.wrapper_of(module) or module).load_state_dict(state_dict, strict=strict)

    @override
    def save_checkpoint(
        self,
        path: PathLike,
        state: Mapping[str, Any],
        storage_options: Any | None = None,
        filter: StateFilter | None = None,
    ) -> None:
        """Sharded: a directory with one file per process. Full: one file of consolidated model weights."""
        runtime.sync()
        save_xla_fsdp_checkpoint(self, path, state, filter, storage_options)

    @override
    def load_checkpoint(
        self,
        path: PathLike,
        state: Module | Optimizer | dict[str, Any] | None = None,
        strict: bool = True,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """A sharded directory restores every shard in place (same world size); a full file loads model weights
        into a model that is not set up yet."""
        if not exists(path):
            raise FileNotFoundError(f"No checkpoint at {os.fspath(path)!r}: the path does not exist.")
        if isdir(path):
            return load_shard(self, path, state, strict, weights_only)
        check_full_load(self, state)
        return super().load_checkpoint(path, state, strict=strict, weights_only=weights_only)

    @override
    def teardown(self) -> None:
        self._wrapped.clear()
        super().teardown()


def _checkpointing_wrapper(classes: tuple[type[Module], ...], module: Module, *args: Any, **kwargs: Any) -> Module:
    """torch_xla's ``auto_wrapper_callable``: recompute activations of ``classes`` in backward, then wrap."""
    fsdp = runtime.xla_module("distributed.fsdp")
    if isinstance(module, classes):
        module = fsdp.checkpoint_module(module)
    return fsdp.XlaFullyShardedDataParallel(module, *args, **kwargs)  # type: ignore[no-any-return]
