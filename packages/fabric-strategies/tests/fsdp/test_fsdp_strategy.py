"""FSDPStrategy configuration in one process: names, validation, precision, launcher, init contexts."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, ShardingStrategy

from fabric_environments import LightningEnvironment
from fabric_precision import FSDPPrecision, MixedPrecision, Precision
from fabric_strategies import STRATEGY_REGISTRY, FSDPStrategy, MultiprocessingLauncher, SubprocessScriptLauncher
from fabric_strategies.fsdp.strategy import fully_shard_options

CPU2 = [torch.device("cpu")] * 2


def test_registry_names_configure_the_strategy():
    fsdp = STRATEGY_REGISTRY.create("fsdp")
    offload = STRATEGY_REGISTRY.create("fsdp_cpu_offload")
    assert isinstance(fsdp, FSDPStrategy)
    assert isinstance(offload, FSDPStrategy)
    assert not fsdp.cpu_offload
    assert offload.cpu_offload
    assert isinstance(offload.offload_policy(), CPUOffloadPolicy)
    assert not offload.offload_policy().pin_memory  # the root device is the CPU: nothing to pin for
    assert type(fsdp.offload_policy()) is OffloadPolicy
    descriptions = STRATEGY_REGISTRY.descriptions()
    assert "FSDP2" in descriptions["fsdp"]
    assert "CPU" in descriptions["fsdp_cpu_offload"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("FULL_SHARD", "FULL_SHARD"), ("shard_grad_op", "SHARD_GRAD_OP"), (ShardingStrategy.NO_SHARD, "NO_SHARD")],
)
def test_sharding_strategy_accepts_names_and_torch_enum_members(value, expected):
    assert FSDPStrategy(sharding_strategy=value).sharding_strategy == expected


def test_invalid_configuration_is_named_with_the_choices():
    with pytest.raises(ValueError, match=r"'ZERO9'.*FULL_SHARD, SHARD_GRAD_OP, NO_SHARD, HYBRID_SHARD"):
        FSDPStrategy(sharding_strategy="ZERO9")
    with pytest.raises(ValueError, match=r"'partial'.*sharded, full"):
        FSDPStrategy(state_dict_type="partial")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"'thread'.*popen, spawn, fork, forkserver"):
        FSDPStrategy(start_method="thread")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"cpu_offload"):
        FSDPStrategy(cpu_offload="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"MixedPrecisionPolicy"):
        FSDPStrategy(mixed_precision=torch.bfloat16)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"auto_wrap_policy.*set of module classes"):
        FSDPStrategy(auto_wrap_policy=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"activation_checkpointing_policy must hold torch.nn.Module subclasses"):
        FSDPStrategy(activation_checkpointing_policy={int})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"\['reshard_after_forwards'\].*reshard_after_forward"):
        FSDPStrategy(reshard_after_forwards=True)
    with pytest.raises(ValueError, match=r"device_mesh=.*HYBRID_SHARD"):
        FSDPStrategy(device_mesh=(1, 2))
    with pytest.raises(ValueError, match=r"device_mesh must be a \(replicas, shard_size\) pair"):
        FSDPStrategy(sharding_strategy="HYBRID_SHARD", device_mesh=(0, 2))


def test_a_hybrid_mesh_that_does_not_fit_the_world_fails_once_the_world_size_is_known(monkeypatch):
    """Checked when the connector completes the strategy, before any process starts (not in setup_environment)."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    strategy = FSDPStrategy(sharding_strategy="HYBRID_SHARD", device_mesh=(3, 2), parallel_devices=CPU2 * 2)
    with pytest.raises(ValueError, match=r"device_mesh=\(3, 2\) has 6 processes but the run has 4"):
        strategy.complete(num_nodes=1)
    fitting = FSDPStrategy(sharding_strategy="HYBRID_SHARD", device_mesh=(2, 4), parallel_devices=CPU2 * 2)
    fitting.complete(num_nodes=2)
    assert fitting.world_size == 8


def test_fully_shard_keywords_pass_through():
    assert "reshard_after_forward" in fully_shard_options()
    assert "mesh" not in fully_shard_options()
    strategy = FSDPStrategy(reshard_after_forward=False)
    assert strategy.fully_shard_kwargs == {"reshard_after_forward": False}


def test_precision_plugins_and_mixed_precision_policy():
    strategy = FSDPStrategy(parallel_devices=CPU2)
    plugin = strategy.default_precision("bf16-mixed")
    assert isinstance(plugin, FSDPPrecision)
    assert plugin.device_type == "cpu"
    with pytest.raises(ValueError, match=r"'64-true'.*32-true, 16-true, bf16-true, 16-mixed, bf16-mixed"):
        strategy.default_precision("64-true")
    with pytest.raises(TypeError, match=r"FSDPPrecision.*MixedPrecision"):
        FSDPStrategy(precision=MixedPrecision("bf16-mixed"))
    with pytest.raises(TypeError, match=r"FSDPPrecision"):
        FSDPStrategy().complete(precision=MixedPrecision("16-mixed"))
    assert FSDPStrategy(precision=Precision()).mixed_precision_policy() == MixedPrecisionPolicy()
    bf16 = FSDPStrategy(precision=FSDPPrecision("bf16-mixed")).mixed_precision_policy()
    assert (bf16.param_dtype, bf16.reduce_dtype) == (torch.bfloat16, torch.float32)
    given = MixedPrecisionPolicy(param_dtype=torch.float16)
    assert FSDPStrategy(precision=FSDPPrecision("bf16-mixed"), mixed_precision=given).mixed_precision_policy() is given


def test_launcher_follows_the_start_method(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    popen = FSDPStrategy(parallel_devices=CPU2, cluster_environment=LightningEnvironment())
    assert isinstance(popen.launcher, SubprocessScriptLauncher)
    assert isinstance(FSDPStrategy(parallel_devices=CPU2, start_method="spawn").launcher, MultiprocessingLauncher)
    monkeypatch.setenv("LOCAL_RANK", "0")  # processes started by an external launcher
    assert FSDPStrategy(parallel_devices=CPU2).launcher is None


def test_module_init_context_uses_the_meta_device_only_for_empty_init():
    strategy = FSDPStrategy()
    with strategy.module_init_context(empty_init=True):
        assert nn.Linear(2, 2).weight.is_meta
    with strategy.module_init_context():
        assert not nn.Linear(2, 2).weight.is_meta
    with FSDPStrategy(precision=FSDPPrecision("bf16-true")).module_init_context(empty_init=True):
        layer = nn.Linear(2, 2)
    assert layer.weight.is_meta
    assert layer.weight.dtype == torch.bfloat16


def test_things_that_need_a_sharded_module_or_a_set_up_run_say_so():
    strategy = FSDPStrategy()
    with pytest.raises(RuntimeError, match=r"setup_environment"):
        _ = strategy.device_mesh
    with pytest.raises(TypeError, match=r"fully_shard"):
        strategy.no_backward_sync(nn.Linear(2, 2), enabled=True)
    with strategy.no_backward_sync(nn.Linear(2, 2), enabled=False):
        pass
    with pytest.raises(TypeError, match=r"storage_options"):
        strategy.save_checkpoint("unused", {}, storage_options={"anon": True})
    with strategy.module_init_context(empty_init=True):
        meta = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"meta device"):
        strategy.setup_optimizer(torch.optim.SGD(meta.parameters(), lr=0.1))


def test_strategy_pickles_for_spawned_processes():
    strategy = FSDPStrategy(parallel_devices=CPU2, auto_wrap_policy={nn.Linear}, sharding_strategy="SHARD_GRAD_OP")
    copy = pickle.loads(pickle.dumps(strategy))
    assert copy.sharding_strategy == "SHARD_GRAD_OP"
    assert copy.setup_modules == []
    assert "SHARD_GRAD_OP" in repr(copy)


def test_sharded_strategy_names_are_public():
    import fabric_strategies

    names = {
        "FSDPStrategy",
        "ModelParallelStrategy",
        "ShardedStrategy",
        "UnsafeCheckpointError",
        "consolidate_sharded_checkpoint",
        "read_sharded_checkpoint",
    }
    assert names <= set(fabric_strategies.__all__)
    assert {"fsdp", "fsdp_cpu_offload", "model_parallel"} <= set(STRATEGY_REGISTRY)
