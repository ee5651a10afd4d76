"""``DeepSpeedStrategy``: ZeRO-sharded data parallelism through DeepSpeed engines, on CUDA or on the CPU."""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer
from typing_extensions import override

from fabric_precision import DeepSpeedPrecision, Precision
from fabric_strategies.checkpoint import StateFilter
from fabric_strategies.deepspeed.checkpoint import (
    find_engine,
    holds_engine,
    is_engine_optimizer,
    load_engine_checkpoint,
    load_engine_module,
    save_engine_checkpoint,
    with_full_module_states,
)
from fabric_strategies.deepspeed.config import DeepSpeedConfig, build_config, zero_stage_of
from fabric_strategies.deepspeed.precision import (
    DEEPSPEED_PRECISIONS,
    check_deepspeed_precision,
    check_device_precision,
    config_precision,
    with_precision_sections,
)
from fabric_strategies.deepspeed.runtime import (
    DEEPSPEED_DEVICE_TYPES,
    DEFAULT_LOGGING_LEVEL,
    EnvironmentPatch,
    align_accelerator,
    gathered_parameters,
    leave_process_group,
    set_logging_level,
    skip_cpu_comm_op,
    zero3_init_context,
)
from fabric_strategies.inherited_parameters import takes_parameters_of
from fabric_strategies.parallel import START_METHOD_POPEN, ParallelStrategy
from fabric_utils import DEEPSPEED, PathLike


def _require_installed() -> None:
    """Raise the install hint when deepspeed is missing, without importing it (that takes seconds)."""
    if not DEEPSPEED.available:
        DEEPSPEED.require("DeepSpeedStrategy")


class DeepSpeedStrategy(ParallelStrategy):
    """DeepSpeed ZeRO: optimizer states, gradients and (stage 3) parameters sharded across processes.

    Configure it with a :class:`DeepSpeedConfig` (``DeepSpeedStrategy(DeepSpeedConfig(stage=3))``), the same
    options as keyword arguments (``DeepSpeedStrategy(stage=3, offload_optimizer=True)``), or a raw DeepSpeed config
    as a dict or the path of a JSON file. The precision sections (``fp16``/``bf16``) come from the precision plugin.

    Runs on CUDA (nccl) and on the CPU (gloo); float16 needs CUDA. Set each model up with its one optimizer
    (``fabric.setup(model, optimizer)``); with several models pass ``model=`` to ``backward``. Checkpoints are
    DeepSpeed's own sharded directories: ``save`` writes the engine (model and optimizer) with
    ``engine.save_checkpoint`` and the rest of the state as its client state; ``load`` restores both.

    Args:
        config: a ``DeepSpeedConfig``, a raw DeepSpeed config dict, or the path of a JSON config.
        process_group_backend: "nccl" on CUDA and "gloo" on the CPU unless given.
        timeout: how long collectives wait for the other processes.
        start_method: "popen" runs the script again per extra local process; "spawn"/"fork"/"forkserver" start
            the launched function with multiprocessing.
        load_full_weights: ``load`` of a single file (not a DeepSpeed directory) loads full model weights into
            the (sharded) model.
        exclude_frozen_parameters: leave parameters without gradients out of checkpoints.
        logging_level: the level of DeepSpeed's logger (it is chatty at INFO).
        build_cpu_comm_op: on the CPU, let DeepSpeed compile its shared-memory all-reduce kernel (used only by its
            inference tensor parallelism; the first build takes tens of seconds and needs a C++ compiler).
        **options: ``DeepSpeedConfig`` fields, as a shorthand for ``config=DeepSpeedConfig(**options)``.
    """

    name: ClassVar[str] = "deepspeed"
    _no_storage_options: ClassVar[str | None] = "DeepSpeed writes local files."
    supported_precisions: ClassVar[tuple[str, ...] | None] = DEEPSPEED_PRECISIONS
    supported_device_types: ClassVar[tuple[str, ...] | None] = DEEPSPEED_DEVICE_TYPES
    _start_method_required: ClassVar[bool] = True

    @takes_parameters_of(ParallelStrategy, START_METHOD_POPEN, after=1, keyword_only=True)
    def __init__(
        self,
        inherited: dict[str, Any],
        /,
        config: DeepSpeedConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        *,
        load_full_weights: bool = False,
        exclude_frozen_parameters: bool = False,
        logging_level: int = DEFAULT_LOGGING_LEVEL,
        build_cpu_comm_op: bool = False,
        **options: Any,
    ) -> None:
        _require_installed()
        super().__init__(**inherited)
        self._base_config, self._options = build_config(config, options)
        self._zero_stage = zero_stage_of(self._base_config)
        self._load_full_weights = bool(load_full_weights)
        self._exclude_frozen_parameters = bool(exclude_frozen_parameters)
        self._logging_level = logging_level
        self._build_cpu_comm_op = bool(build_cpu_comm_op)
        self._fallback_precision = DeepSpeedPrecision("32-true")
        self._config: dict[str, Any] | None = None  # the final config, fixed by setup_environment
        self._engines: list[Any] = []
        self._environment_patch = EnvironmentPatch()

    # -- configuration -------------------------------------------------------------------------------------------
    @property
    def options(self) -> DeepSpeedConfig | None:
        """The ``DeepSpeedConfig`` this strategy was built from (``None`` when given a raw config)."""
        return self._options

    @property
    def zero_stage(self) -> int:
        return self._zero_stage

    @property
    def config(self) -> dict[str, Any]:
        """The DeepSpeed config the engines get: the options plus the precision plugin's section."""
        if self._config is not None:
            return copy.deepcopy(self._config)
        return self._final_config()

    def _final_config(self) -> dict[str, Any]:
        return with_precision_sections(self._base_config, self.precision)

    @property
    def engines(self) -> list[Any]:
        """The DeepSpeed engines this strategy created, in set-up order."""
        return list(self._engines)

    @property
    @override
    def precision(self) -> DeepSpeedPrecision:
        precision = super().precision
        assert isinstance(precision, DeepSpeedPrecision)
        return precision

    @override
    def _check_precision_plugin(self, precision: Precision | None) -> None:
        check_deepspeed_precision(precision)

    @override
    def default_precision(self, name: str) -> DeepSpeedPrecision:
        self._check_precision_supported(name)
        check_device_precision(name, self.root_device.type)
        return DeepSpeedPrecision(name)  # type: ignore[arg-type]

    # -- processes -----------------------------------------------------------------------------------------------
    @override
    def setup_environment(self) -> None:
        """Check the precision for the device, join the process group, then hand it to DeepSpeed.

        Rendezvous variables DeepSpeed reads (``LOCAL_RANK``, ...) that are missing, as in a single process started
        without a launcher, are set here and removed again by ``teardown``.
        """
        device_type = self.root_device.type
        check_device_precision(self.precision.precision, device_type)
        check_device_precision(config_precision(self._base_config), device_type, source="the DeepSpeed config's")
        config = self._final_config()
        deepspeed = DEEPSPEED.require("DeepSpeedStrategy")
        align_accelerator(device_type)
        if device_type == "cpu" and not self._build_cpu_comm_op:
            skip_cpu_comm_op()
        set_logging_level(self._logging_level)
        super().setup_environment()
        self._environment_patch.apply(self._rendezvous_variables())
        deepspeed.comm.init_distributed(dist_backend=self.process_group_backend, timeout=self._timeout, verbose=False)
        self._config = config

    def _rendezvous_variables(self) -> dict[str, str]:
        environment = self.cluster_environment
        values = {"RANK": str(self.global_rank), "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": str(self.local_rank)}
        try:
            values["MASTER_ADDR"], values["MASTER_PORT"] = environment.main_address, str(environment.main_port)
        except NotImplementedError:  # an environment without a TCP rendezvous
            pass
        return values

    def _require_environment(self, action: str) -> dict[str, Any]:
        if self._config is None:
            raise RuntimeError(
                f"DeepSpeedStrategy cannot {action} before setup_environment() (fabric.launch() does it): DeepSpeed"
                " needs the process group first."
            )
        return self._config

    # -- modules and optimizers ----------------------------------------------------------------------------------
    @override
    def setup_module_and_optimizers(
        self, module: Module, optimizers: list[Optimizer]
    ) -> tuple[Module, list[Optimizer]]:
        """Create a DeepSpeed engine for ``module`` and its single optimizer; return the engine and the optimizer
        DeepSpeed wraps it in (a ZeRO optimizer from stage 1 on)."""
        if len(optimizers) != 1:
            raise ValueError(
                f"DeepSpeedStrategy sets up a model with exactly one optimizer, got {len(optimizers)}. Give each model"
                " its own optimizer and set them up in pairs: fabric.setup(model_a, optimizer_a),"
                " fabric.setup(model_b, optimizer_b)."
            )
        engine, optimizer = self._initialize_engine(module, optimizers[0])
        return engine, [optimizer]

    @override
    def setup_module(self, module: Module) -> Module:
        """Create a DeepSpeed engine without an optimizer (for evaluation or inference)."""
        engine, _ = self._initialize_engine(module, None)
        return engine

    @override
    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        raise NotImplementedError(
            "DeepSpeedStrategy builds the model and its optimizer together: use fabric.setup(model, optimizer)"
            " instead of setting up the optimizer on its own."
        )

    def _initialize_engine(self, module: Module, optimizer: Optimizer | None) -> tuple[Any, Any]:
        config = self._require_environment("set up a model")
        deepspeed = DEEPSPEED.require("DeepSpeedStrategy")
        device = self.root_device
        args = argparse.Namespace(device_rank=device.index if device.index is not None else self.local_rank)
        parameters = [p for p in module.parameters() if p.requires_grad] if optimizer is not None else None
        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=args,
            model=module,
            optimizer=optimizer,
            model_parameters=parameters,
            config=copy.deepcopy(config),
            dist_init_required=False,
        )
        self._engines.append(engine)
        return engine, ds_optimizer

    @override
    def module_to_device(self, module: Module) -> None:
        """Move the module unless DeepSpeed places its parameters itself (ZeRO-3 and parameter offload)."""
        if self._zero_stage == 3:
            return
        module.to(self.root_device)

    @override
    def module_init_context(self, empty_init: bool | None = None) -> AbstractContextManager[Any]:
        """ZeRO-3: modules created inside are partitioned across processes as they are built (``zero.Init``);
        ``empty_init=True`` also skips their initialisation. Other stages: the base behaviour."""
        if self._zero_stage != 3:
            return super().module_init_context(empty_init=empty_init)
        config = self._require_environment("create a ZeRO-3 module")
        remote_device = self._options.remote_device if self._options is not None else None
        return zero3_init_context(config, remote_device, skip_init=bool(empty_init))

    def _engine(self, module: Module | None) -> Any:
        """The engine for ``module`` (an engine, or a module an engine wraps); with ``None``, the only one."""
        if module is None:
            if len(self._engines) == 1:
                return self._engines[0]
            if not self._engines:
                raise RuntimeError("DeepSpeedStrategy has no model set up yet: call fabric.setup(model, optimizer).")
            raise ValueError(
                f"DeepSpeedStrategy set up {len(self._engines)} models: say which one the loss belongs to with"
                " fabric.backward(loss, model=model)."
            )
        engine = find_engine(self._engines, module)
        if engine is None:
            raise ValueError(
                f"The model {type(module).__name__} was not set up by this DeepSpeedStrategy: pass a model returned"
                " by fabric.setup(model, optimizer)."
            )
        return engine

    # -- training step -------------------------------------------------------------------------------------------
    @override
    def backward(self, tensor: Tensor, module: Module | None, *args: Any, **kwargs: Any) -> None:
        """``engine.backward(loss)`` on the engine of ``module`` (DeepSpeed scales the loss and reduces gradients)."""
        engine = self._engine(module)
        tensor = self.precision.pre_backward(tensor, engine)
        self.precision.backward(tensor, engine, *args, **kwargs)
        self.precision.post_backward(tensor, engine)

    @override
    def optimizer_step(self, optimizer: Any, **kwargs: Any) -> Any:
        """``engine.step()`` of the engine that owns ``optimizer`` (the step, loss scaling, clipping, zero_grad)."""
        if "closure" in kwargs:
            raise ValueError("DeepSpeed's engine.step() takes no closure: compute the loss and call backward first.")
        for engine in self._engines:
            if is_engine_optimizer(engine, optimizer):
                return engine.step(**kwargs)
        raise ValueError(
            f"The optimizer {type(optimizer).__name__} was not set up by this DeepSpeedStrategy: step the optimizer"
            " returned by fabric.setup(model, optimizer)."
        )

    @override
    def no_backward_sync(self, module: Module, enabled: bool) -> AbstractContextManager[Any]:
        """Skip gradient reduction (stages 0 and 1, ``engine.no_sync``); stages 2 and 3 reduce as they partition."""
        if not enabled:
            return nullcontext()
        engine = self._engine(module)
        if self._zero_stage >= 2 or not hasattr(engine, "no_sync"):
            raise NotImplementedError(
                f"DeepSpeed ZeRO stage {self._zero_stage} partitions gradients during backward and cannot skip their"
                " synchronisation. Remove no_backward_sync (or pass enabled=False), or use stage 0 or 1."
            )
        return engine.no_sync()  # type: ignore[no-any-return]

    @override
    def clip_gradients_norm(
        self,
        module: Module,
        optimizer: Optimizer,
        max_norm: float | int,
        norm_type: float | int = 2.0,
        error_if_nonfinite: bool = True,
    ) -> Tensor:
        raise NotImplementedError(
            "DeepSpeed clips gradients inside engine.step(): set DeepSpeedConfig(gradient_clipping=max_norm) (or"
            " 'gradient_clipping' in the config) instead of calling clip_gradients."
        )

    @override
    def clip_gradients_value(self, module: Module, optimizer: Optimizer, clip_val: float | int) -> None:
        raise NotImplementedError(
            "DeepSpeed clips gradients by norm inside engine.step() only: set DeepSpeedConfig(gradient_clipping=...)"
            " instead of clipping by value."
        )

    # -- state -----------------------------------------------------------------------------------------------------
    def _local_module(self, module: Module) -> Module:
        engine = find_engine(self._engines, module)
        return engine.module if engine is not None else module  # type: ignore[no-any-return]

    @override
    def get_module_state_dict(self, module: Module) -> dict[str, Any]:
        """The full state dict of the model (gathered from every process under ZeRO-3)."""
        local = self._local_module(module)
        with gathered_parameters(local, modifier_rank=None):
            return {name: value.detach().clone() for name, value in local.state_dict().items()}

    @override
    def load_module_state_dict(self, module: Module, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Load full weights into the model (into every process's shard under ZeRO-3)."""
        local = self._local_module(module)
        with gathered_parameters(local, modifier_rank=0):
            local.load_state_dict(state_dict, strict=strict)

    @override
    def _write_checkpoint(self, path: PathLike, state: Any, storage_options: Any, filter: StateFilter | None) -> None:
        """Write a DeepSpeed checkpoint directory at ``path`` (every process writes its shards).

        A state without a set-up model (e.g. ``{"model": model.state_dict()}``) is written by global rank 0 to one
        file instead, loadable by ``fabric.load`` or ``torch.load``; a ZeRO-3 model's state dict in it is gathered
        in full first."""
        if not holds_engine(self._engines, state):
            super()._write_checkpoint(path, with_full_module_states(self, state), None, filter)
            return
        save_engine_checkpoint(self, path, state, filter, self._exclude_frozen_parameters)

    @override
    def load_checkpoint(
        self,
        path: PathLike,
        state: Module | Optimizer | dict[str, Any] | None = None,
        strict: bool = True,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Restore a DeepSpeed checkpoint directory into the engine in ``state`` and the other entries.

        DeepSpeed reads its directories with its own loader, which unpickles them fully: unless ``weights_only`` is
        False, every file it will read is checked with the weights-only unpickler first. A single file
        (``load_full_weights`` or ``load_raw``) is read through the checkpoint IO, with ``weights_only`` honoured.
        With a model as ``state`` and a DeepSpeed directory, only its weights load.
        """
        if not os.path.exists(os.fspath(path)):
            raise FileNotFoundError(f"No checkpoint at {os.fspath(path)!r}: the path does not exist.")
        if isinstance(state, Module) and os.path.isdir(os.fspath(path)):
            engine = self._engine(state)
            load_engine_module(engine, path, strict, weights_only)
            return {}
        if isinstance(state, (Module, Optimizer)) or not os.path.isdir(os.fspath(path)):
            if holds_engine(self._engines, state) and not self._load_full_weights:
                raise ValueError(
                    f"{os.fspath(path)!r} is not a DeepSpeed checkpoint directory. To load full model weights from a"
                    " single file, create the strategy with load_full_weights=True, or use"
                    " fabric.load_raw(path, model)."
                )
            return super().load_checkpoint(path, state, strict=strict, weights_only=weights_only)
        if not state:
            raise ValueError(
                "Loading a DeepSpeed checkpoint needs the model it restores into: pass state={'model': model, ...}."
            )
        if not isinstance(state, dict):
            raise TypeError(f"`state` must be a module, an optimizer or a dict, got {type(state).__name__}")
        remainder = load_engine_checkpoint(self, path, state, strict, weights_only)
        self.barrier("deepspeed_load_checkpoint")
        return remainder

    # -- end -------------------------------------------------------------------------------------------------------
    @override
    def teardown(self) -> None:
        """Release the engines, remove the rendezvous variables this strategy set, and leave the process group."""
        for engine in self._engines:
            destroy = getattr(engine, "destroy", None)
            if callable(destroy):
                destroy()
        self._engines.clear()
        self._config = None
        if self._owns_process_group:
            leave_process_group()
        self._environment_patch.restore()
        super().teardown()

    @override
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_engines"] = []  # engines live in the process that built them
        return state

    @override
    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(stage={self._zero_stage}, precision={self.precision.precision!r},"
            f" start_method={self._start_method!r}, backend={self._process_group_backend!r})"
        )
