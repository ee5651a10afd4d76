"""``ShardedStrategy``: the common base of strategies whose modules hold DTensors on a device mesh (FSDP2, TP).

It owns what ``FSDPStrategy`` and ``ModelParallelStrategy`` share: processes and the process group (as in DDP), the
device mesh, meta-device initialisation and materialisation, DTensor-aware gradient clipping, ``no_backward_sync``
through FSDP2's ``set_requires_gradient_sync``, and sharded or full checkpoints.
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from collections.abc import Generator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer
from typing_extensions import override

from fabric_precision import FSDPPrecision, Precision, parse_precision
from fabric_strategies.checkpoint import StateFilter
from fabric_strategies.fsdp import checkpoint as sharded_checkpoint
from fabric_strategies.fsdp.clip import clip_grad_norm
from fabric_strategies.fsdp.materialize import has_meta_tensors, materialize_module
from fabric_strategies.inherited_parameters import takes_parameters_of
from fabric_strategies.parallel import START_METHOD_POPEN, ParallelStrategy
from fabric_utils import PathLike, rank_zero_warn

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

StateDictType = Literal["sharded", "full"]
STATE_DICT_TYPES: tuple[str, ...] = get_args(StateDictType)
#: the precisions a sharded module supports (``FSDPPrecision``'s)
SHARDED_PRECISIONS: tuple[str, ...] = ("32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed")


def check_precision_plugin(precision: Precision | None, owner: str) -> None:
    """Sharded modules need ``FSDPPrecision`` (or the plain 32-bit ``Precision``)."""
    if precision is not None and type(precision) is not Precision and not isinstance(precision, FSDPPrecision):
        raise TypeError(
            f"{owner} works with FSDPPrecision (or the 32-bit Precision), got {type(precision).__name__}"
            f" ({precision.precision!r}). Pass FSDPPrecision({precision.precision!r}) or a precision name."
        )


class ShardedStrategy(ParallelStrategy, ABC):
    """Base of the strategies that shard modules over a device mesh (one process per device).

    Args:
        process_group_backend: "gloo", "nccl", ...; nccl for CUDA devices and gloo otherwise by default.
        timeout: how long collectives wait for the other processes before failing.
        start_method: "popen" runs the script again for each extra local process; "spawn", "fork" and
            "forkserver" start them with ``multiprocessing`` and call the launched function.
        state_dict_type: "sharded" saves a ``torch.distributed.checkpoint`` directory (every process writes its
            shards; loads at any world size); "full" saves one file from global rank 0.
    """

    supported_precisions: ClassVar[tuple[str, ...] | None] = SHARDED_PRECISIONS
    supported_device_types: ClassVar[tuple[str, ...] | None] = ("cpu", "cuda")
    _start_method_required: ClassVar[bool] = True
    _no_storage_options: ClassVar[str | None] = "configure them on the CheckpointIO instead."

    @takes_parameters_of(ParallelStrategy, START_METHOD_POPEN)
    def __init__(self, inherited: dict[str, Any], /, state_dict_type: StateDictType = "sharded") -> None:
        super().__init__(**inherited)
        if state_dict_type not in STATE_DICT_TYPES:
            raise ValueError(
                f"Unknown state_dict_type {state_dict_type!r}. Choose one of: {', '.join(STATE_DICT_TYPES)}"
            )
        self._state_dict_type: StateDictType = state_dict_type
        self._device_mesh: DeviceMesh | None = None
        self._modules: weakref.WeakSet[Module] = weakref.WeakSet()

    # -- configuration -------------------------------------------------------------------------------------------
    @property
    def state_dict_type(self) -> StateDictType:
        return self._state_dict_type

    @property
    def device_mesh(self) -> DeviceMesh:
        """The device mesh of this run (built by ``setup_environment``)."""
        if self._device_mesh is None:
            raise RuntimeError(
                f"{type(self).__name__}.device_mesh exists once the processes are set up: call"
                " setup_environment() first (fabric.launch() does)."
            )
        return self._device_mesh

    @property
    def setup_modules(self) -> list[Module]:
        """The modules this strategy set up that are still alive."""
        return list(self._modules)

    @override
    def _check_precision_plugin(self, precision: Precision | None) -> None:
        check_precision_plugin(precision, type(self).__name__)

    @override
    def default_precision(self, name: str) -> Precision:
        """``FSDPPrecision`` for ``name`` on the root device's type; ``ValueError`` for precisions sharding lacks."""
        canonical = parse_precision(name)
        self._check_precision_supported(canonical)
        return FSDPPrecision(canonical, device_type=self.root_device.type)  # type: ignore[arg-type]

    # -- processes -----------------------------------------------------------------------------------------------
    @override
    def _set_world_ranks(self) -> None:
        super()._set_world_ranks()
        # the world size is known now (the connector completed the strategy): a mesh that does not fit it fails
        # here, before any process starts
        self._check_mesh_fits()

    def _check_mesh_fits(self) -> None:
        """Raise ``ValueError`` when the configured mesh does not fit ``world_size`` processes on ``num_nodes``."""

    @override
    def setup_environment(self) -> None:
        super().setup_environment()
        self._device_mesh = self._create_device_mesh()

    @abstractmethod
    def _create_device_mesh(self) -> DeviceMesh:
        """The device mesh of this run; called once the process group exists."""

    # -- modules and optimizers -----------------------------------------------------------------------------------
    @abstractmethod
    def _parallelize(self, module: Module) -> Module:
        """Apply sharding / tensor parallelism to ``module`` (in place or not); return the module to use."""

    def _materialization_device(self) -> torch.device:
        return self.root_device

    def _use_meta_device(self, empty_init: bool | None) -> bool:
        """Whether ``module_init_context(empty_init)`` creates modules on the meta device."""
        return bool(empty_init)

    @override
    def setup_module(self, module: Module) -> Module:
        """Shard ``module``; parameters created on the meta device are then allocated and initialised."""
        module = self._parallelize(module)
        if not isinstance(module, Module):
            raise TypeError(f"Parallelizing the module must give a torch.nn.Module, got {type(module).__name__}")
        if has_meta_tensors(module):
            uninitialised = materialize_module(module, self._materialization_device())
            if uninitialised:
                rank_zero_warn(
                    f"The submodules {uninitialised} were created on the meta device and define no"
                    " `reset_parameters()`, so their parameters and buffers hold uninitialised memory: define"
                    " `reset_parameters()` on them or load their weights before training."
                )
        self._modules.add(module)
        return module

    @override
    def setup_module_and_optimizers(
        self, module: Module, optimizers: list[Optimizer]
    ) -> tuple[Module, list[Optimizer]]:
        """Shard the module, then point the optimizers at the sharded parameters that replaced the original ones."""
        names: dict[int, str] = {}
        for name, parameter in module.named_parameters(remove_duplicate=False):
            names.setdefault(id(parameter), name)  # a shared parameter keeps its first name, as named_parameters()
        module = self.setup_module(module)
        sharded = dict(module.named_parameters())
        for optimizer in optimizers:
            _rebind_optimizer(optimizer, names, sharded)
        return module, [self.setup_optimizer(optimizer) for optimizer in optimizers]

    @override
    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        if any(p.is_meta for group in optimizer.param_groups for p in group["params"]):
            raise ValueError(
                "The optimizer holds parameters on the meta device: create it from the parameters of the module that"
                " `setup_module` returned (or set up the module and the optimizer together)."
            )
        return optimizer

    @override
    def module_to_device(self, module: Module) -> None:
        """Nothing to do: sharding (``fully_shard``, ``parallelize_module``) moves each process's shards to its device,
        so the full module never has to fit on one device (and stays in CPU memory with CPU offload)."""

    @override
    def module_init_context(self, empty_init: bool | None = None) -> AbstractContextManager[Any]:
        """Create modules on the meta device (no memory, no initialisation) when ``empty_init`` asks for it;
        ``setup_module`` then allocates only each process's shards and initialises them."""
        if not self._use_meta_device(empty_init):
            return super().module_init_context(empty_init)
        stack = ExitStack()
        stack.enter_context(torch.device("meta"))
        stack.enter_context(self.precision.module_init_context())
        return stack

    # -- training step -------------------------------------------------------------------------------------------
    @override
    def no_backward_sync(self, module: Module, enabled: bool) -> AbstractContextManager[Any]:
        """Accumulate gradients locally (no reduce-scatter / all-reduce) in backward passes inside the context."""
        if not enabled:
            return nullcontext()
        from torch.distributed.fsdp import FSDPModule

        sharded = [m for m in module.modules() if isinstance(m, FSDPModule)]
        if not sharded:
            raise TypeError(
                "no_backward_sync needs a module sharded with FSDP2 (`fully_shard`), got"
                f" {type(module).__name__} without any: set up the module with this strategy first."
            )
        return _gradient_sync_disabled(sharded)

    @override
    def clip_gradients_norm(
        self,
        module: Module,
        optimizer: Optimizer,
        max_norm: float | int,
        norm_type: float | int = 2.0,
        error_if_nonfinite: bool = True,
    ) -> Tensor:
        """Clip to a total norm of ``max_norm`` computed over all shards; return that norm (same on every process)."""
        self.precision.unscale_gradients(optimizer)
        parameters = list(self.precision.main_params(optimizer))
        return clip_grad_norm(parameters, max_norm, norm_type, error_if_nonfinite, device=self.root_device)

    # -- state -----------------------------------------------------------------------------------------------------
    @override
    def get_module_state_dict(self, module: Module) -> dict[str, Any]:
        """DTensor shards with ``state_dict_type="sharded"``; the full state (on global rank 0) with ``"full"``."""
        return sharded_checkpoint.module_state(module, full=self._state_dict_type == "full")

    @override
    def load_module_state_dict(self, module: Module, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Load shards (a state dict of DTensors) or a full state dict (plain tensors) into ``module``."""
        from torch.distributed.tensor import DTensor

        full = not any(isinstance(value, DTensor) for value in state_dict.values())
        sharded_checkpoint.load_module_state(module, state_dict, strict=strict, full=full)

    @override
    def get_optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        module = sharded_checkpoint.find_module(optimizer, self.setup_modules)
        return sharded_checkpoint.optimizer_state(module, optimizer, full=self._state_dict_type == "full")

    @override
    def _write_checkpoint(self, path: PathLike, state: Any, storage_options: Any, filter: StateFilter | None) -> None:
        """Save ``state`` as a sharded directory or a full file (``state_dict_type``). Every process must call it."""
        sharded_checkpoint.save(self, path, state, filter)

    @override
    def load_checkpoint(
        self,
        path: PathLike,
        state: Module | Optimizer | dict[str, Any] | None = None,
        strict: bool = True,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Load a sharded directory (at any world size) or a full file; the format is read from the path."""
        weights_only = True if weights_only is None else weights_only
        return sharded_checkpoint.load(self, path, state, strict, weights_only)

    # -- end -------------------------------------------------------------------------------------------------------
    @override
    def teardown(self) -> None:
        self._device_mesh = None
        self._modules.clear()
        super().teardown()

    @override
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_device_mesh"] = None
        state["_modules"] = None  # a WeakSet does not pickle; the receiving process starts with none set up
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        vars(self).update(state)
        self._modules = weakref.WeakSet()


def _rebind_optimizer(optimizer: Optimizer, names: dict[int, str], sharded: dict[str, torch.nn.Parameter]) -> None:
    """Replace the optimizer's references to original parameters with the sharded parameters of the same name."""
    current = {id(p) for p in sharded.values()}
    for group in optimizer.param_groups:
        params = []
        for parameter in group["params"]:
            if id(parameter) in current:
                params.append(parameter)
                continue
            name = names.get(id(parameter))
            if name is None or name not in sharded:
                raise ValueError(
                    f"The optimizer {type(optimizer).__name__} holds a parameter (shape {tuple(parameter.shape)})"
                    " that is not a parameter of the module being set up: create the optimizer from"
                    " module.parameters()."
                )
            if optimizer.state.get(parameter):
                raise ValueError(
                    f"The optimizer {type(optimizer).__name__} already has state for parameter {name!r}; sharding"
                    " replaces the parameters, so create the optimizer (or load its state) after setup."
                )
            params.append(sharded[name])
        group["params"] = params


@contextmanager
def _gradient_sync_disabled(modules: Sequence[Any]) -> Generator[None, None, None]:
    for module in modules:
        module.set_requires_gradient_sync(False, recurse=False)
    try:
        yield
    finally:
        for module in modules:
            module.set_requires_gradient_sync(True, recurse=False)
