"""SingleDeviceStrategy: the device, completion from the connector, and a real training step."""

from __future__ import annotations

import pytest
import torch

from fabric_strategies import SingleDeviceCollective, SingleDeviceStrategy
from fabric_utils import override_hardware


def test_device_forms():
    assert SingleDeviceStrategy().root_device == torch.device("cpu")
    assert SingleDeviceStrategy("cpu").root_device == torch.device("cpu")
    assert SingleDeviceStrategy(1).root_device == torch.device("cuda", 1)
    assert SingleDeviceStrategy(torch.device("cuda:0")).root_device == torch.device("cuda", 0)
    with pytest.raises(TypeError, match=r"device must be.*1.5"):
        SingleDeviceStrategy(1.5)  # type: ignore[arg-type]


def test_complete_sets_the_device_only_when_missing():
    strategy = SingleDeviceStrategy()
    with override_hardware(cuda_device_count=1):
        strategy.complete(parallel_devices=[torch.device("cuda", 0)])
    assert strategy.root_device == torch.device("cuda", 0)
    given = SingleDeviceStrategy("cpu")
    given.complete(parallel_devices=[torch.device("cuda", 0)])
    assert given.root_device == torch.device("cpu")
    with pytest.raises(ValueError, match=r"exactly one device, got 2.*ddp"):
        SingleDeviceStrategy().complete(parallel_devices=[torch.device("cpu")] * 2)


def test_ranks_and_collective_of_a_single_process():
    strategy = SingleDeviceStrategy()
    assert (strategy.world_size, strategy.global_rank, strategy.local_rank, strategy.node_rank) == (1, 0, 0, 0)
    assert strategy.is_global_zero
    assert isinstance(strategy.collective, SingleDeviceCollective)
    assert "device=cpu" in repr(strategy)


def test_training_on_one_device():
    strategy = SingleDeviceStrategy("cpu")
    strategy.setup_environment()
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    strategy.module_to_device(model)
    model, (optimizer,) = strategy.setup_module_and_optimizers(model, [torch.optim.SGD(model.parameters(), lr=0.1)])
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.mse_loss(model(x), y)
        strategy.backward(loss, model)
        strategy.optimizer_step(optimizer)
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    with strategy.no_backward_sync(model, enabled=True):
        model(x).sum().backward()
    assert model.weight.grad is not None
    strategy.teardown()
