"""``ModelParallelStrategy``: the user's function applies tensor parallelism and FSDP2 on a 2-D device mesh."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Union

from torch.nn import Module
from typing_extensions import override

from fabric_strategies.fsdp.base import ShardedStrategy
from fabric_strategies.inherited_parameters import takes_parameters_of
from fabric_strategies.parallel import START_METHOD_POPEN, ParallelStrategy

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

ParallelizeFn = Callable[[Module, "DeviceMesh"], Module]
MeshSize = Union[int, Literal["auto"]]
DATA_PARALLEL_DIM, TENSOR_PARALLEL_DIM = "data_parallel", "tensor_parallel"


def _check_size(name: str, value: Any) -> MeshSize:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value  # type: ignore[no-any-return]
    raise ValueError(f"{name} must be 'auto' or an int >= 1, got {value!r}")


def resolve_mesh_sizes(
    data_parallel_size: MeshSize, tensor_parallel_size: MeshSize, world_size: int, num_nodes: int
) -> tuple[int, int]:
    """``(data_parallel_size, tensor_parallel_size)`` for ``world_size`` processes on ``num_nodes`` machines.

    "auto" for both: tensor parallelism within a node, data parallelism across nodes. "auto" for one: whatever the
    other leaves. The product must be the world size.
    """
    if data_parallel_size == "auto" and tensor_parallel_size == "auto":
        data_parallel_size = num_nodes
        tensor_parallel_size = max(world_size // num_nodes, 1)
    elif data_parallel_size == "auto":
        assert isinstance(tensor_parallel_size, int)
        data_parallel_size = max(world_size // tensor_parallel_size, 1)
    elif tensor_parallel_size == "auto":
        tensor_parallel_size = max(world_size // data_parallel_size, 1)
    assert isinstance(data_parallel_size, int)
    assert isinstance(tensor_parallel_size, int)
    if data_parallel_size * tensor_parallel_size != world_size:
        raise ValueError(
            f"data_parallel_size={data_parallel_size} x tensor_parallel_size={tensor_parallel_size} ="
            f" {data_parallel_size * tensor_parallel_size} processes, but the run has {world_size} (devices x"
            " num_nodes): choose sizes whose product is the world size"
        )
    return data_parallel_size, tensor_parallel_size


class ModelParallelStrategy(ShardedStrategy):
    """Tensor parallelism and FSDP2 on a 2-D device mesh, applied by your ``parallelize_fn(module, device_mesh)``.

    The mesh has the dimensions ``"data_parallel"`` and ``"tensor_parallel"``: apply
    ``torch.distributed.tensor.parallel.parallelize_module`` with ``device_mesh["tensor_parallel"]`` and
    ``fully_shard`` with ``device_mesh["data_parallel"]``, and return the module. Modules created in
    ``fabric.init_module()`` live on the meta device until ``parallelize_fn`` ran; their shards are then allocated and
    initialised with ``reset_parameters()``.

    Args:
        parallelize_fn: ``(module, device_mesh) -> module``; required (this strategy cannot be chosen by name alone).
        data_parallel_size: processes that hold different data ("auto": the number of nodes).
        tensor_parallel_size: processes that split each layer ("auto": the devices of a node).
        save_distributed_checkpoint: save a sharded ``torch.distributed.checkpoint`` directory (default) or, with
            False, one full file from global rank 0.
        process_group_backend, timeout, start_method: as for ``DDPStrategy``.
    """

    name: ClassVar[str] = "model_parallel"

    # Lightning's parameters first (its own, then the process settings), then the parts Lightning does not take
    @takes_parameters_of(
        ParallelStrategy,
        START_METHOD_POPEN,
        names=(
            *("process_group_backend", "timeout", "start_method"),
            *("accelerator", "parallel_devices", "cluster_environment", "checkpoint_io", "precision"),
        ),
        after=4,
    )
    def __init__(
        self,
        inherited: dict[str, Any],
        /,
        parallelize_fn: ParallelizeFn | None = None,
        data_parallel_size: MeshSize = "auto",
        tensor_parallel_size: MeshSize = "auto",
        save_distributed_checkpoint: bool = True,
    ) -> None:
        if parallelize_fn is None:
            raise TypeError(
                "ModelParallelStrategy needs parallelize_fn, your function (module, device_mesh) -> module that applies"
                " tensor parallelism and fully_shard; strategy='model_parallel' cannot be chosen by name alone. Pass"
                " strategy=ModelParallelStrategy(parallelize_fn=my_parallelize)."
            )
        if not callable(parallelize_fn):
            raise TypeError(
                f"parallelize_fn must be a callable (module, device_mesh) -> module, got {parallelize_fn!r}"
            )
        if not isinstance(save_distributed_checkpoint, bool):
            raise TypeError(f"save_distributed_checkpoint must be a bool, got {save_distributed_checkpoint!r}")
        super().__init__(**inherited, state_dict_type="sharded" if save_distributed_checkpoint else "full")
        self._parallelize_fn = parallelize_fn
        self._data_parallel_size = _check_size("data_parallel_size", data_parallel_size)
        self._tensor_parallel_size = _check_size("tensor_parallel_size", tensor_parallel_size)

    @property
    def parallelize_fn(self) -> ParallelizeFn:
        return self._parallelize_fn

    @property
    def mesh_sizes(self) -> tuple[int, int]:
        """``(data_parallel_size, tensor_parallel_size)`` resolved for this run's world size."""
        return resolve_mesh_sizes(self._data_parallel_size, self._tensor_parallel_size, self.world_size, self.num_nodes)

    @property
    @override
    def distributed_sampler_kwargs(self) -> dict[str, Any] | None:
        """Processes of one tensor-parallel group read the same data: split the data across the data-parallel ranks."""
        data_parallel_size, tensor_parallel_size = self.mesh_sizes
        return {"num_replicas": data_parallel_size, "rank": self.global_rank // tensor_parallel_size}

    @override
    def _use_meta_device(self, empty_init: bool | None) -> bool:
        return empty_init is not False

    @override
    def _check_mesh_fits(self) -> None:
        _ = self.mesh_sizes

    @override
    def _create_device_mesh(self) -> DeviceMesh:
        from torch.distributed.device_mesh import init_device_mesh

        return init_device_mesh(
            self.root_device.type, self.mesh_sizes, mesh_dim_names=(DATA_PARALLEL_DIM, TENSOR_PARALLEL_DIM)
        )

    @override
    def _parallelize(self, module: Module) -> Module:
        result = self._parallelize_fn(module, self.device_mesh)
        if not isinstance(result, Module):
            raise TypeError(
                f"parallelize_fn must return the parallelized torch.nn.Module, got {type(result).__name__}"
                " (did it forget to `return module`?)"
            )
        return result

    @override
    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(parallelize_fn={getattr(self._parallelize_fn, '__name__', self._parallelize_fn)!r},"
            f" data_parallel_size={self._data_parallel_size!r}, tensor_parallel_size={self._tensor_parallel_size!r},"
            f" state_dict_type={self.state_dict_type!r})"
        )
