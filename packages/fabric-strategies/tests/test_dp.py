"""DataParallelStrategy: CUDA only; off CUDA the name resolves to ddp with a warning. Real DP runs on 2 GPUs."""

from __future__ import annotations

import pytest
import torch

from fabric_strategies import DataParallelStrategy, resolve_strategy_name
from fabric_testing import RunIf
from fabric_utils import FabricWarning, override_hardware

CUDA2 = [torch.device("cuda", 0), torch.device("cuda", 1)]


def test_dp_refuses_non_cuda_devices():
    with pytest.raises(ValueError, match=r"CUDA devices only, got \['cpu', 'cpu'\].*ddp"):
        DataParallelStrategy(parallel_devices=["cpu", "cpu"])
    strategy = DataParallelStrategy()
    with pytest.raises(ValueError, match=r"CUDA devices only"):
        strategy.complete(parallel_devices=[torch.device("cpu")])


def test_dp_on_cpu_resolves_to_ddp_with_a_warning():
    with pytest.warns(FabricWarning, match=r"strategy='dp' does not run on 'cpu' devices; using strategy='ddp'"):
        assert resolve_strategy_name("dp", "cpu") == "ddp"
    assert resolve_strategy_name("dp", "cuda") == "dp"
    assert resolve_strategy_name("ddp", "cpu") == "ddp"


def test_dp_is_one_process_driving_every_device():
    with override_hardware(cuda_device_count=2):
        strategy = DataParallelStrategy(parallel_devices=CUDA2)
        strategy.complete(num_nodes=1)
    assert strategy.root_device == torch.device("cuda", 0)
    assert (strategy.world_size, strategy.global_rank, strategy.local_rank, strategy.node_rank) == (1, 0, 0, 0)
    assert strategy.distributed_sampler_kwargs is None
    assert strategy.launcher is None
    tensor = torch.tensor([1.0, 3.0])
    assert torch.equal(strategy.all_reduce(tensor), tensor)
    with pytest.raises(ValueError, match=r"'median'"):
        strategy.all_reduce(tensor, reduce_op="median")
    assert strategy.all_gather(tensor) is tensor
    assert strategy.broadcast("x") == "x"
    assert strategy.reduce_boolean_decision(True)
    strategy.barrier()


@RunIf(min_cuda_gpus=2)
def test_dp_splits_batches_over_two_gpus(tmp_path):
    strategy = DataParallelStrategy(parallel_devices=CUDA2)
    strategy.complete()
    strategy.setup_environment()
    model = torch.nn.Linear(4, 2)
    strategy.module_to_device(model)
    wrapped = strategy.setup_module(model)
    assert isinstance(wrapped, torch.nn.DataParallel)
    assert wrapped.device_ids == [0, 1]
    batch = strategy.batch_to_device(torch.randn(8, 4))
    out = wrapped(batch)
    assert out.shape == (8, 2)
    assert out.device == torch.device("cuda", 0)
    strategy.backward(out.sum(), wrapped)
    assert model.weight.grad is not None
    strategy.save_checkpoint(tmp_path / "dp.pt", {"model": wrapped})
    assert set(strategy.load_checkpoint(tmp_path / "dp.pt")["model"]) == {"weight", "bias"}
    strategy.teardown()
