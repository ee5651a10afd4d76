"""Sharding strategies -> device-mesh shapes and resharding behaviour."""

from __future__ import annotations

import pytest

from fabric_strategies.fsdp.mesh import (
    check_hybrid_shape,
    mesh_dim_names,
    mesh_shape,
    parse_sharding_strategy,
    reshard_after_forward,
)


def test_mesh_shapes_per_strategy():
    assert mesh_shape("FULL_SHARD", world_size=4, num_nodes=1) == (4,)
    assert mesh_shape("SHARD_GRAD_OP", world_size=4, num_nodes=2) == (4,)
    assert mesh_shape("NO_SHARD", world_size=4, num_nodes=2) == (4, 1)
    assert mesh_shape("HYBRID_SHARD", world_size=8, num_nodes=2) == (2, 4)
    assert mesh_shape("HYBRID_SHARD", world_size=8, num_nodes=1, hybrid_shape=(4, 2)) == (4, 2)
    with pytest.raises(ValueError, match=r"device_mesh=\(3, 2\) has 6 processes but the run has 8"):
        mesh_shape("HYBRID_SHARD", world_size=8, num_nodes=1, hybrid_shape=(3, 2))
    with pytest.raises(ValueError, match=r"same number of processes on each of the 3 nodes"):
        mesh_shape("HYBRID_SHARD", world_size=8, num_nodes=3)
    assert mesh_dim_names((4,)) == ("shard",)
    assert mesh_dim_names((2, 2)) == ("replicate", "shard")


def test_reshard_after_forward_and_parsing():
    assert reshard_after_forward("FULL_SHARD") is None  # FSDP's default: reshard all but the root
    assert reshard_after_forward("HYBRID_SHARD") is None
    assert reshard_after_forward("SHARD_GRAD_OP") is False
    assert reshard_after_forward("NO_SHARD") is False
    assert parse_sharding_strategy("hybrid_shard") == "HYBRID_SHARD"
    with pytest.raises(ValueError, match=r"None.*FULL_SHARD"):
        parse_sharding_strategy(None)
    assert check_hybrid_shape([2, 3]) == (2, 3)
    for bad in ((2,), (2, 0), ("2", 1), 4, (True, 2)):
        with pytest.raises(ValueError, match=r"replicas, shard_size"):
            check_hybrid_shape(bad)
