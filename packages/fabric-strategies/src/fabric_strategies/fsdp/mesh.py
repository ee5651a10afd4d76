"""Sharding strategies of FSDP and the device meshes they run on.

- ``FULL_SHARD``: parameters, gradients and optimizer state sharded over all processes (1-D mesh); parameters
  are resharded after forward and all-gathered again for backward.
- ``SHARD_GRAD_OP``: like ``FULL_SHARD`` but the parameters stay unsharded from forward to backward (ZeRO-2 like).
- ``NO_SHARD``: every process keeps everything (a 2-D mesh of ``world_size`` replicas of size-1 shards):
  gradients are all-reduced, as in DDP.
- ``HYBRID_SHARD``: sharded within a group of processes, replicated across groups (a 2-D mesh
  ``(replicas, shard_size)``, by default one group per node).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

ShardingStrategyName = Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"]
SHARDING_STRATEGIES: tuple[str, ...] = get_args(ShardingStrategyName)
REPLICATE_DIM, SHARD_DIM = "replicate", "shard"


def parse_sharding_strategy(value: Any) -> str:
    """The canonical name of a sharding strategy: a name in any case, or torch's ``ShardingStrategy`` enum member."""
    name = getattr(value, "name", value)  # torch.distributed.fsdp.ShardingStrategy.FULL_SHARD -> "FULL_SHARD"
    if isinstance(name, str) and name.upper() in SHARDING_STRATEGIES:
        return name.upper()
    raise ValueError(f"Unknown sharding_strategy {value!r}. Choose one of: {', '.join(SHARDING_STRATEGIES)}")


def check_hybrid_shape(shape: Any) -> tuple[int, int]:
    """Validate a ``(replicas, shard_size)`` pair given for ``HYBRID_SHARD``."""
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)
    ):
        raise ValueError(
            f"device_mesh must be a (replicas, shard_size) pair of ints >= 1 or a DeviceMesh, got {shape!r}"
        )
    return int(shape[0]), int(shape[1])


def mesh_shape(
    strategy: str, world_size: int, num_nodes: int, hybrid_shape: tuple[int, int] | None = None
) -> tuple[int, ...]:
    """The device-mesh shape for ``strategy`` with ``world_size`` processes on ``num_nodes`` machines."""
    if strategy in ("FULL_SHARD", "SHARD_GRAD_OP"):
        return (world_size,)
    if strategy == "NO_SHARD":
        return (world_size, 1)
    if hybrid_shape is None:
        if world_size % num_nodes:
            raise ValueError(f"HYBRID_SHARD needs the same number of processes on each of the {num_nodes} nodes")
        hybrid_shape = (num_nodes, world_size // num_nodes)
    replicas, shard_size = hybrid_shape
    if replicas * shard_size != world_size:
        raise ValueError(
            f"device_mesh={hybrid_shape} has {replicas * shard_size} processes but the run has {world_size}:"
            " choose (replicas, shard_size) with replicas * shard_size == world_size"
        )
    return hybrid_shape


def mesh_dim_names(shape: tuple[int, ...]) -> tuple[str, ...]:
    return (SHARD_DIM,) if len(shape) == 1 else (REPLICATE_DIM, SHARD_DIM)


def reshard_after_forward(strategy: str) -> bool | None:
    """``fully_shard``'s ``reshard_after_forward`` for ``strategy`` (``None``: FSDP's default, True except the root)."""
    return False if strategy in ("SHARD_GRAD_OP", "NO_SHARD") else None
