"""DDPStrategy: configuration, the registry entries, and real two-process training over gloo."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from fabric_environments import LightningEnvironment, TorchElasticEnvironment
from fabric_strategies import (
    STRATEGY_REGISTRY,
    DDPStrategy,
    MultiprocessingLauncher,
    SubprocessScriptLauncher,
)
from fabric_testing import TinyMLP, run_processes
from fabric_utils import override_hardware

CPU2 = [torch.device("cpu")] * 2
TIMEOUT = timedelta(seconds=30)


def test_ddp_keyword_arguments_reach_distributed_data_parallel_and_typos_are_named():
    strategy = DDPStrategy(find_unused_parameters=True, static_graph=False, bucket_cap_mb=5)
    assert strategy.ddp_kwargs == {"find_unused_parameters": True, "static_graph": False, "bucket_cap_mb": 5}
    with pytest.raises(TypeError, match=r"\['find_unused_paramters'\].*find_unused_parameters"):
        DDPStrategy(find_unused_paramters=True)


def test_invalid_start_method_backend_and_timeout_are_rejected():
    with pytest.raises(ValueError, match=r"'thread'.*popen, spawn, fork, forkserver"):
        DDPStrategy(start_method="thread")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"'glooo'.*gloo"):
        DDPStrategy(process_group_backend="glooo")
    with pytest.raises(TypeError, match=r"timedelta"):
        DDPStrategy(timeout=30)  # type: ignore[arg-type]


def test_backend_follows_the_device_unless_given():
    assert DDPStrategy(parallel_devices=CPU2).process_group_backend == "gloo"
    with override_hardware(cuda_device_count=2):
        cuda = DDPStrategy(parallel_devices=[torch.device("cuda", 0), torch.device("cuda", 1)])
        assert cuda.process_group_backend == "nccl"
    assert DDPStrategy(parallel_devices=CPU2, process_group_backend="GLOO").process_group_backend == "gloo"
    assert DDPStrategy(timeout=TIMEOUT).timeout == TIMEOUT


@pytest.mark.parametrize(
    ("name", "start_method", "find_unused"),
    [
        ("ddp", "popen", None),
        ("ddp_spawn", "spawn", None),
        ("ddp_fork", "fork", None),
        ("ddp_notebook", "fork", None),
        ("ddp_find_unused_parameters_true", "popen", True),
    ],
)
def test_registry_entries_configure_the_strategy(name, start_method, find_unused):
    strategy = STRATEGY_REGISTRY.create(name)
    assert isinstance(strategy, DDPStrategy)
    assert strategy.start_method == start_method
    assert strategy.ddp_kwargs.get("find_unused_parameters") == find_unused
    assert STRATEGY_REGISTRY.descriptions()[name]


def test_launcher_matches_the_start_method_and_is_none_under_an_external_launcher(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    popen = DDPStrategy(parallel_devices=CPU2, cluster_environment=LightningEnvironment())
    assert isinstance(popen.launcher, SubprocessScriptLauncher)
    assert not popen.launcher.is_interactive_compatible
    spawn = DDPStrategy(parallel_devices=CPU2, start_method="spawn")
    assert isinstance(spawn.launcher, MultiprocessingLauncher)
    assert not spawn.launcher.is_interactive_compatible
    assert STRATEGY_REGISTRY.create("ddp_notebook").launcher.is_interactive_compatible
    for key, value in {"RANK": "0", "GROUP_RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    external = DDPStrategy(parallel_devices=CPU2, start_method="spawn", cluster_environment=TorchElasticEnvironment())
    assert external.launcher is None


def test_no_backward_sync_needs_the_wrapped_module():
    strategy = DDPStrategy(parallel_devices=CPU2)
    with strategy.no_backward_sync(torch.nn.Linear(2, 2), enabled=False):
        pass
    with pytest.raises(TypeError, match=r"DistributedDataParallel.*Linear"):
        strategy.no_backward_sync(torch.nn.Linear(2, 2), enabled=True)


def _params_equal_across_ranks(strategy: DDPStrategy, module: torch.nn.Module) -> bool:
    flat = torch.cat([p.detach().flatten() for p in module.parameters()])
    gathered = strategy.all_gather(flat)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


def _grads(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in module.parameters()])


def _train_two_processes(rank: int, world_size: int) -> dict[str, object]:
    strategy = DDPStrategy(parallel_devices=CPU2, timeout=TIMEOUT, find_unused_parameters=False)
    strategy.complete()
    strategy.setup_environment()
    assert dist.get_backend() == "gloo"
    assert (strategy.global_rank, strategy.world_size, strategy.local_rank) == (rank, world_size, rank)
    assert strategy.distributed_sampler_kwargs == {"num_replicas": 2, "rank": rank}
    torch.manual_seed(0)
    module = TinyMLP(in_features=4, hidden=8, out_features=2)
    strategy.module_to_device(module)
    model = strategy.setup_module(module)
    assert isinstance(model, DistributedDataParallel)
    optimizer = strategy.setup_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    generator = torch.Generator().manual_seed(100 + rank)  # different data on each rank
    for _ in range(3):
        loss = model(torch.randn(8, 4, generator=generator)).square().mean()
        strategy.backward(loss, model)
        strategy.optimizer_step(optimizer)
        optimizer.zero_grad()
    in_sync_after_training = _params_equal_across_ranks(strategy, module)

    # inside no_backward_sync the gradients stay local (and differ); the next synced backward averages them
    with strategy.no_backward_sync(model, enabled=True):
        model(torch.randn(8, 4, generator=generator)).sum().backward()
    local = _grads(module)
    gathered_local = strategy.all_gather(local)
    model(torch.randn(8, 4, generator=generator)).sum().backward()
    gathered_synced = strategy.all_gather(_grads(module))

    strategy.teardown()
    output = model(torch.ones(1, 4))  # after teardown the wrapper computes locally
    return {
        "in_sync": in_sync_after_training,
        "local_grads_differ": not torch.equal(gathered_local[0], gathered_local[1]),
        "synced_grads_equal": torch.equal(gathered_synced[0], gathered_synced[1]),
        "destroyed": not dist.is_initialized(),
        "reducer_released": not hasattr(model, "reducer"),
        "output_shape": tuple(output.shape),
    }


def test_ddp_trains_in_sync_and_no_backward_sync_skips_the_all_reduce():
    results = run_processes(_train_two_processes, init_process_group=False)
    for result in results:
        assert result == {
            "in_sync": True,
            "local_grads_differ": True,
            "synced_grads_equal": True,
            "destroyed": True,
            "reducer_released": True,
            "output_shape": (1, 2),
        }


def _find_unused(rank: int, world_size: int) -> bool:
    class Branchy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = torch.nn.Linear(2, 2)
            self.unused = torch.nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    strategy = STRATEGY_REGISTRY.create("ddp_find_unused_parameters_true", parallel_devices=CPU2, timeout=TIMEOUT)
    strategy.complete()
    strategy.setup_environment()
    model = strategy.setup_module(Branchy())
    for _ in range(2):  # without find_unused_parameters the second iteration raises in DDP
        model(torch.ones(1, 2)).sum().backward()
    strategy.teardown()
    return model.find_unused_parameters


def test_find_unused_parameters_entry_lets_a_forward_skip_parameters():
    assert run_processes(_find_unused, init_process_group=False) == [True, True]


def _joins_existing_group(rank: int, world_size: int) -> tuple[bool, bool]:
    strategy = DDPStrategy(parallel_devices=CPU2, timeout=TIMEOUT)
    strategy.complete()
    strategy.setup_environment()  # the harness already created the group: the strategy uses it
    value = strategy.all_reduce(torch.tensor(float(rank)), reduce_op="sum")
    strategy.teardown()
    # a group the strategy did not create is left to its owner
    return bool(value == 1.0), dist.is_initialized()


def test_strategy_joins_a_group_someone_else_created_and_leaves_it_to_them():
    assert run_processes(_joins_existing_group) == [(True, True), (True, True)]
