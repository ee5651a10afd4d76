"""ModelParallelStrategy: configuration, and tensor parallelism + FSDP2 for real in two processes over gloo."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from fabric_precision import FSDPPrecision, MixedPrecision
from fabric_strategies import STRATEGY_REGISTRY, ModelParallelStrategy
from fabric_strategies.model_parallel import resolve_mesh_sizes
from fabric_testing import RunIf, run_processes

TIMEOUT = timedelta(seconds=30)


class FeedForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Linear(6, 8)
        self.w2 = nn.Linear(8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(torch.relu(self.w1(x)))


def parallelize(module: nn.Module, device_mesh) -> nn.Module:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tensor_parallel = device_mesh["tensor_parallel"]
    if tensor_parallel.size() > 1:
        parallelize_module(module, tensor_parallel, {"w1": ColwiseParallel(), "w2": RowwiseParallel()})
    fully_shard(module, mesh=device_mesh["data_parallel"])
    return module


def test_parallelize_fn_is_required_with_a_clear_error_also_when_chosen_by_name():
    assert "model_parallel" in STRATEGY_REGISTRY
    assert "parallelize_fn" in STRATEGY_REGISTRY.descriptions()["model_parallel"]
    with pytest.raises(TypeError, match=r"needs parallelize_fn.*ModelParallelStrategy\(parallelize_fn="):
        STRATEGY_REGISTRY.create("model_parallel")
    with pytest.raises(TypeError, match=r"callable"):
        ModelParallelStrategy(parallelize_fn="not a function")  # type: ignore[arg-type]


def test_mesh_sizes_are_resolved_and_validated():
    assert resolve_mesh_sizes("auto", "auto", world_size=8, num_nodes=2) == (2, 4)
    assert resolve_mesh_sizes("auto", 2, world_size=8, num_nodes=1) == (4, 2)
    assert resolve_mesh_sizes(2, "auto", world_size=8, num_nodes=1) == (2, 4)
    with pytest.raises(ValueError, match=r"data_parallel_size=3 x tensor_parallel_size=1 = 3.*has 2"):
        resolve_mesh_sizes(3, 1, world_size=2, num_nodes=1)
    for bad in (0, -1, "two", 1.5, True):
        with pytest.raises(ValueError, match=r"'auto' or an int >= 1"):
            ModelParallelStrategy(parallelize, data_parallel_size=bad)  # type: ignore[arg-type]


def test_mesh_sizes_that_do_not_fit_the_world_fail_once_the_world_size_is_known(monkeypatch):
    """Checked when the connector completes the strategy, before any process starts (not in setup_environment)."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    cpus = [torch.device("cpu")] * 4
    strategy = ModelParallelStrategy(parallelize, data_parallel_size=3, tensor_parallel_size=2, parallel_devices=cpus)
    with pytest.raises(ValueError, match=r"data_parallel_size=3 x tensor_parallel_size=2 = 6.*has 4"):
        strategy.complete(num_nodes=1)
    fitting = ModelParallelStrategy(parallelize, data_parallel_size=4, tensor_parallel_size=2, parallel_devices=cpus)
    fitting.complete(num_nodes=2)
    assert fitting.mesh_sizes == (4, 2)


def test_configuration_precision_and_sampler_split(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    strategy = ModelParallelStrategy(parallelize, tensor_parallel_size=2, parallel_devices=[torch.device("cpu")] * 2)
    strategy.complete(num_nodes=1)
    assert strategy.parallelize_fn is parallelize
    assert strategy.state_dict_type == "sharded"
    assert ModelParallelStrategy(parallelize, save_distributed_checkpoint=False).state_dict_type == "full"
    assert strategy.mesh_sizes == (1, 2)
    # both processes of the tensor-parallel group read the same data
    assert strategy.distributed_sampler_kwargs == {"num_replicas": 1, "rank": 0}
    plugin = strategy.default_precision("bf16-mixed")
    assert isinstance(plugin, FSDPPrecision)
    assert plugin.precision == "bf16-mixed"
    with pytest.raises(ValueError, match=r"'64-true'.*Choose one of"):
        strategy.default_precision("64-true")
    with pytest.raises(TypeError, match=r"FSDPPrecision"):
        ModelParallelStrategy(parallelize, precision=MixedPrecision("bf16-mixed"))
    with pytest.raises(RuntimeError, match=r"setup_environment"):
        _ = strategy.device_mesh
    # modules are created on the meta device unless empty_init=False
    with strategy.module_init_context():
        assert FeedForward().w1.weight.is_meta
    with strategy.module_init_context(empty_init=False):
        assert not FeedForward().w1.weight.is_meta
    assert "parallelize" in repr(strategy)


def _reference(steps: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = FeedForward()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for x in _batches()[:steps]:
        model(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.state_dict()


def _batches() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return [torch.randn(4, 6, generator=generator) for _ in range(3)]


def _train(strategy: ModelParallelStrategy, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    sampler = strategy.distributed_sampler_kwargs
    assert sampler is not None
    for x in _batches()[:steps]:
        per_replica = len(x) // sampler["num_replicas"]
        local = x[sampler["rank"] * per_replica : (sampler["rank"] + 1) * per_replica]
        strategy.backward(model(local).square().mean(), model)
        strategy.clip_gradients_norm(model, optimizer, max_norm=100.0)
        optimizer.step()
        optimizer.zero_grad()


def _full(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in module.state_dict().items()}


def _tensor_and_data_parallel(rank: int, world_size: int, directory: str) -> None:
    checkpoint = os.path.join(directory, "tp")
    for data_parallel, tensor_parallel in ((1, 2), (2, 1)):
        strategy = ModelParallelStrategy(
            parallelize,
            data_parallel_size=data_parallel,
            tensor_parallel_size=tensor_parallel,
            parallel_devices=[torch.device("cpu")] * world_size,
            timeout=TIMEOUT,
        )
        strategy.setup_environment()
        assert strategy.device_mesh.mesh_dim_names == ("data_parallel", "tensor_parallel")
        assert tuple(strategy.device_mesh.shape) == (data_parallel, tensor_parallel)
        torch.manual_seed(0)
        with strategy.module_init_context():  # meta device, materialised after parallelize_fn
            model = FeedForward()
        model = strategy.setup_module(model)
        optimizer = strategy.setup_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
        if tensor_parallel == 2:
            assert model.w1.weight.to_local().shape == (4, 6)  # each process holds half of the columns
            _train(strategy, model, optimizer, steps=2)
            strategy.save_checkpoint(checkpoint, {"model": model, "optimizer": optimizer, "step": 2})
        else:
            # resume the tensor-parallel checkpoint in a data-parallel layout, then train one more step
            state = {"model": model, "optimizer": optimizer, "step": 0}
            assert strategy.load_checkpoint(checkpoint, state) == {}
            assert state["step"] == 2
            torch.testing.assert_close(_full(model), _reference(steps=2), atol=1e-6, rtol=0)
            _train_one_more(strategy, model, optimizer)
            torch.testing.assert_close(_full(model), _reference(steps=3), atol=1e-6, rtol=0)


def _train_one_more(strategy: ModelParallelStrategy, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    x = _batches()[2]
    sampler = strategy.distributed_sampler_kwargs
    assert sampler is not None
    half = len(x) // sampler["num_replicas"]
    strategy.backward(model(x[sampler["rank"] * half : (sampler["rank"] + 1) * half]).square().mean(), model)
    optimizer.step()
    optimizer.zero_grad()


def test_tensor_parallel_and_data_parallel_layouts_train_and_reshard_checkpoints(tmp_path):
    run_processes(_tensor_and_data_parallel, str(tmp_path), world_size=2)
    # the checkpoint also loads in one process without any process group, into a plain module
    plain = FeedForward()
    remainder = ModelParallelStrategy(parallelize).load_checkpoint(tmp_path / "tp", {"model": plain})
    assert remainder["step"] == 2
    torch.testing.assert_close(plain.state_dict(), _reference(steps=2), atol=1e-6, rtol=0)


@RunIf(min_cuda_gpus=2)
def test_tensor_parallel_on_two_cuda_devices():
    run_processes(_cuda_tensor_parallel, world_size=2, backend="nccl")


def _cuda_tensor_parallel(rank: int, world_size: int) -> None:
    devices = [torch.device("cuda", i) for i in range(world_size)]
    strategy = ModelParallelStrategy(parallelize, tensor_parallel_size=2, parallel_devices=devices, timeout=TIMEOUT)
    strategy.setup_environment()
    torch.manual_seed(0)
    with strategy.module_init_context(empty_init=False):
        model = FeedForward()
    model = strategy.setup_module(model)
    optimizer = strategy.setup_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    for x in _batches()[:2]:
        strategy.backward(model(x.cuda()).square().mean(), model)
        optimizer.step()
        optimizer.zero_grad()
    expected = _reference(steps=2)
    torch.testing.assert_close({k: v.cpu() for k, v in _full(model).items()}, expected, atol=1e-4, rtol=0)
