"""``FSDPStrategy``: fully sharded data parallelism with FSDP2 (``torch.distributed.fsdp.fully_shard``)."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch.nn import Module
from typing_extensions import override

from fabric_strategies.fsdp.base import ShardedStrategy, StateDictType
from fabric_strategies.fsdp.mesh import (
    ShardingStrategyName,
    check_hybrid_shape,
    mesh_dim_names,
    mesh_shape,
    parse_sharding_strategy,
    reshard_after_forward,
)
from fabric_strategies.fsdp.wrap import ModulePolicy, apply_activation_checkpointing, resolve_policy, wrap_targets
from fabric_strategies.inherited_parameters import check_passed_keywords, takes_parameters_of
from fabric_strategies.parallel import START_METHOD_POPEN, ParallelStrategy

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

# fully_shard's options the strategy sets itself
_MANAGED_OPTIONS = ("module", "mesh", "mp_policy", "offload_policy")


def fully_shard_options() -> list[str]:
    """The keyword arguments of ``fully_shard`` that ``FSDPStrategy(**kwargs)`` passes through."""
    from torch.distributed.fsdp import fully_shard

    return [name for name in inspect.signature(fully_shard).parameters if name not in _MANAGED_OPTIONS]


class FSDPStrategy(ShardedStrategy):
    """Fully sharded data parallelism (FSDP2 ``fully_shard``): parameters, gradients and optimizer state sharded.

    Args:
        cpu_offload: keep sharded parameters, gradients and optimizer state in CPU memory (``True`` or a
            ``CPUOffloadPolicy``); the optimizer step then runs on the CPU.
        mixed_precision: a ``MixedPrecisionPolicy`` to use instead of the precision plugin's.
        auto_wrap_policy: which submodules become their own FSDP unit (all-gathered and freed on their own): a set
            of module classes, or a callable ``(module) -> bool``. The root module is always sharded, last. Left
            at None, the classes the model names in ``_no_split_modules`` are chosen (a Hugging Face model's decoder
            layers), else none.
        activation_checkpointing_policy: the submodules whose activations are recomputed in backward instead of
            kept (a set of classes or a callable, as above).
        sharding_strategy: "FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD" or "HYBRID_SHARD" (torch's
            ``ShardingStrategy`` members work too).
        device_mesh: for HYBRID_SHARD, ``(replicas, shard_size)`` or a ``DeviceMesh`` (default: one replica per
            node). A ``DeviceMesh`` works with the other strategies as well.
        state_dict_type: "sharded" (a ``torch.distributed.checkpoint`` directory that loads at any world size) or
            "full" (one file, written by global rank 0).
        process_group_backend, timeout, start_method: as for ``DDPStrategy``.
        **kwargs: passed to every ``fully_shard`` call (``reshard_after_forward``, ``shard_placement_fn``, ...).
    """

    name: ClassVar[str] = "fsdp"

    @takes_parameters_of(ParallelStrategy, START_METHOD_POPEN)
    def __init__(
        self,
        inherited: dict[str, Any],
        /,
        cpu_offload: bool | CPUOffloadPolicy = False,
        mixed_precision: MixedPrecisionPolicy | None = None,
        auto_wrap_policy: ModulePolicy | None = None,
        activation_checkpointing_policy: ModulePolicy | None = None,
        sharding_strategy: ShardingStrategyName | Any = "FULL_SHARD",
        state_dict_type: StateDictType = "sharded",
        device_mesh: tuple[int, int] | DeviceMesh | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**inherited, state_dict_type=state_dict_type)
        from torch.distributed.device_mesh import DeviceMesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

        if not isinstance(cpu_offload, (bool, CPUOffloadPolicy)):
            raise TypeError(f"cpu_offload must be a bool or a CPUOffloadPolicy, got {cpu_offload!r}")
        if mixed_precision is not None and not isinstance(mixed_precision, MixedPrecisionPolicy):
            raise TypeError(
                f"mixed_precision must be a torch.distributed.fsdp.MixedPrecisionPolicy, got {mixed_precision!r}"
            )
        self._cpu_offload = cpu_offload
        self._mixed_precision = mixed_precision
        self._auto_wrap_policy = resolve_policy(auto_wrap_policy, "auto_wrap_policy")
        self._activation_checkpointing_policy = resolve_policy(
            activation_checkpointing_policy, "activation_checkpointing_policy"
        )
        self._sharding_strategy = parse_sharding_strategy(sharding_strategy)
        if device_mesh is not None and not isinstance(device_mesh, DeviceMesh):
            device_mesh = check_hybrid_shape(device_mesh)
            if self._sharding_strategy != "HYBRID_SHARD":
                raise ValueError(
                    f"device_mesh={device_mesh} (replicas, shard_size) is for sharding_strategy='HYBRID_SHARD', got"
                    f" sharding_strategy={self._sharding_strategy!r}; pass a DeviceMesh to choose the mesh yourself"
                )
        self._mesh_option = device_mesh
        refusal = "FSDPStrategy got keyword arguments {} that fully_shard does not take."
        check_passed_keywords(kwargs, fully_shard_options(), refusal)
        self._fully_shard_kwargs = kwargs

    # -- configuration -------------------------------------------------------------------------------------------
    @property
    def sharding_strategy(self) -> str:
        return self._sharding_strategy

    @property
    def cpu_offload(self) -> bool:
        return self._cpu_offload is not False

    @property
    def fully_shard_kwargs(self) -> dict[str, Any]:
        return dict(self._fully_shard_kwargs)

    def mixed_precision_policy(self) -> MixedPrecisionPolicy:
        """The policy given to ``fully_shard``: ``mixed_precision`` if given, else the precision plugin's."""
        if self._mixed_precision is not None:
            return self._mixed_precision
        policy = getattr(self.precision, "mixed_precision_policy", None)
        if policy is not None:
            return policy()  # type: ignore[no-any-return]
        from torch.distributed.fsdp import MixedPrecisionPolicy

        return MixedPrecisionPolicy()

    def offload_policy(self) -> Any:
        """``CPUOffloadPolicy`` with ``cpu_offload`` (memory pinned only for CUDA devices), else no offloading."""
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy

        if isinstance(self._cpu_offload, CPUOffloadPolicy):
            return self._cpu_offload
        if self._cpu_offload:
            return CPUOffloadPolicy(pin_memory=self.root_device.type == "cuda")
        return OffloadPolicy()

    # -- mesh and sharding ---------------------------------------------------------------------------------------
    def _mesh_shape(self) -> tuple[int, ...] | None:
        """The shape of the mesh to create (``None``: a ``DeviceMesh`` was given)."""
        if self._mesh_option is not None and not isinstance(self._mesh_option, tuple):
            return None
        return mesh_shape(self._sharding_strategy, self.world_size, self.num_nodes, self._mesh_option)

    @override
    def _check_mesh_fits(self) -> None:
        self._mesh_shape()

    @override
    def _create_device_mesh(self) -> DeviceMesh:
        from torch.distributed.device_mesh import init_device_mesh

        shape = self._mesh_shape()
        if shape is None:
            return self._mesh_option  # type: ignore[return-value]
        return init_device_mesh(self.root_device.type, shape, mesh_dim_names=mesh_dim_names(shape))

    @override
    def _materialization_device(self) -> torch.device:
        return torch.device("cpu") if self.cpu_offload else self.root_device

    @override
    def _parallelize(self, module: Module) -> Module:
        """Activation checkpointing, then ``fully_shard`` on the policy's submodules (bottom-up) and on the root."""
        from torch.distributed.fsdp import FSDPModule, fully_shard

        if isinstance(module, FSDPModule):
            raise ValueError(
                f"The module {type(module).__name__} is already sharded with fully_shard; FSDPStrategy shards it"
                " itself (pass the module before sharding, or use ModelParallelStrategy to shard it yourself)."
            )
        apply_activation_checkpointing(module, self._activation_checkpointing_policy)
        options = {
            "mesh": self.device_mesh,
            "mp_policy": self.mixed_precision_policy(),
            "offload_policy": self.offload_policy(),
            "reshard_after_forward": reshard_after_forward(self._sharding_strategy),
            **self._fully_shard_kwargs,
        }
        for submodule in wrap_targets(module, self._auto_wrap_policy):
            if not isinstance(submodule, FSDPModule):
                fully_shard(submodule, **options)
        fully_shard(module, **options)
        return module

    @override
    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sharding_strategy={self._sharding_strategy!r}, cpu_offload={self.cpu_offload},"
            f" state_dict_type={self.state_dict_type!r}, precision={self.precision!r})"
        )
