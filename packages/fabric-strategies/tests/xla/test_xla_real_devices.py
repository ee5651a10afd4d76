"""The XLA strategies on real XLA devices (TPUs), run by the ``tests_xla`` session where torch_xla finds devices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fabric_accelerators import XLAAccelerator
from fabric_strategies import SingleDeviceXLAStrategy, XLAFSDPStrategy, XLAStrategy
from fabric_testing import RunIf, TinyMLP


def _all_devices() -> list[torch.device]:
    return XLAAccelerator.get_parallel_devices(XLAAccelerator.auto_device_count())


def _collectives(strategy: XLAStrategy) -> dict[str, Any]:
    strategy.setup_environment()
    rank, world = strategy.global_rank, strategy.world_size
    torch.manual_seed(rank)  # different weights per process: setup_module must make them equal
    model = strategy.setup_module(TinyMLP(4, 8, 2))
    strategy.module_to_device(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(torch.randn(2, 4, device=strategy.root_device)).sum()
    strategy.backward(loss, model)
    strategy.optimizer_step(optimizer)
    weights = strategy.all_gather(next(model.parameters()).detach())
    uneven = strategy.all_gather(torch.ones(rank + 1, device=strategy.root_device))
    result = {
        "world": world,
        "sum": strategy.all_reduce(torch.tensor(1.0, device=strategy.root_device), reduce_op="sum").item(),
        "ranks": strategy.all_gather(torch.tensor(rank, device=strategy.root_device)).cpu().tolist(),
        "same_weights": all(torch.equal(weights[0].cpu(), w.cpu()) for w in weights),
        "uneven": [t.numel() for t in uneven] if isinstance(uneven, list) else None,
        "broadcast": strategy.broadcast({"from": rank}, src=0),
    }
    strategy.barrier("end")
    return result


@RunIf(xla=True)
def test_xla_strategy_on_every_device() -> None:
    strategy = XLAStrategy(parallel_devices=_all_devices())
    result = strategy.launcher.launch(_collectives, strategy)  # type: ignore[union-attr]
    world = result["world"]
    assert result["sum"] == world
    assert result["ranks"] == list(range(world))
    assert result["same_weights"]
    assert result["broadcast"] == {"from": 0}
    if world > 1:
        assert result["uneven"] == list(range(1, world + 1))


@RunIf(xla=True)
def test_single_device_xla_trains(tmp_path: Path) -> None:
    strategy = SingleDeviceXLAStrategy()
    strategy.setup_environment()
    model = TinyMLP(4, 8, 2)
    strategy.module_to_device(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().cpu().clone() for p in model.parameters()]
    strategy.backward(model(torch.randn(2, 4, device=strategy.root_device)).sum(), model)
    strategy.optimizer_step(optimizer)
    assert not any(torch.equal(a, b.detach().cpu()) for a, b in zip(before, model.parameters()))
    strategy.save_checkpoint(tmp_path / "ckpt.pt", {"model": model})
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["model"]["layer1.weight"].device.type == "cpu"
    strategy.teardown()


def _fsdp(strategy: XLAFSDPStrategy, directory: str) -> bool:
    strategy.setup_environment()
    torch.manual_seed(0)
    model = strategy.setup_module(TinyMLP(4, 8, 2))
    optimizer = strategy.setup_optimizer(torch.optim.Adam(model.parameters(), lr=0.1))
    strategy.backward(model(torch.randn(2, 4, device=strategy.root_device)).sum(), model)
    strategy.optimizer_step(optimizer)
    strategy.save_checkpoint(directory, {"model": model, "optimizer": optimizer})
    torch.manual_seed(1)
    fresh = strategy.setup_module(TinyMLP(4, 8, 2))
    fresh_optimizer = strategy.setup_optimizer(torch.optim.Adam(fresh.parameters(), lr=0.1))
    strategy.load_checkpoint(directory, {"model": fresh, "optimizer": fresh_optimizer})
    return all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(model.parameters(), fresh.parameters()))


@RunIf(xla=True)
def test_xla_fsdp_trains_and_resumes_from_shards(tmp_path: Path) -> None:
    strategy = XLAFSDPStrategy(parallel_devices=_all_devices())
    assert strategy.launcher.launch(_fsdp, strategy, str(tmp_path / "ckpt"))  # type: ignore[union-attr]
