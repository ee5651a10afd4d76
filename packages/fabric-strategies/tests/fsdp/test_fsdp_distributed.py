"""FSDPStrategy for real: two processes over gloo, compared with single-process training of the same model."""

from __future__ import annotations

import math
import os
from datetime import timedelta

import pytest
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from fabric_precision import FSDPPrecision
from fabric_strategies import STRATEGY_REGISTRY, FSDPStrategy, consolidate_sharded_checkpoint
from fabric_testing import RunIf, run_processes

TIMEOUT = timedelta(seconds=30)
STEPS = 3


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.forward_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_calls += 1
        return x + torch.tanh(self.linear(x))


class Net(nn.Module):
    """Uneven shapes on purpose (3 output rows do not split evenly over 2 processes)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.blocks = nn.Sequential(Block(8), Block(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.inp(x)))


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 6, generator=generator), torch.randn(8, 3, generator=generator)) for _ in range(STEPS)]


def _strategy(world_size: int, **kwargs: object) -> FSDPStrategy:
    strategy = FSDPStrategy(parallel_devices=[torch.device("cpu")] * world_size, timeout=TIMEOUT, **kwargs)
    strategy.setup_environment()
    return strategy


def _full(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in module.state_dict().items()}


def _reference(steps: int = STEPS, optimizer: type = torch.optim.SGD) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Single-process training on the global batches; clips by norm at step 0 and by value at step 2."""
    torch.manual_seed(0)
    model = Net()
    opt = optimizer(model.parameters(), lr=0.1)
    norms = []
    for step, (x, y) in enumerate(_batches()[:steps]):
        nn.functional.mse_loss(model(x), y).backward()
        if step == 0:
            norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 0.05)))
        if step == 2:
            nn.utils.clip_grad_value_(model.parameters(), 0.01)
        opt.step()
        opt.zero_grad()
    return model.state_dict(), norms


def _train(strategy, model, optimizer, rank, world_size, forward=None):
    """Each process trains on its slice of the global batch: grad accumulation with no_backward_sync at step 1."""
    forward = forward or model
    norms = []
    for step, (x, y) in enumerate(_batches()):
        per_rank = len(x) // world_size
        x, y = x[rank * per_rank : (rank + 1) * per_rank], y[rank * per_rank : (rank + 1) * per_rank]
        x, y = x.to(strategy.root_device), y.to(strategy.root_device)
        if step == 1:
            half = per_rank // 2
            with strategy.no_backward_sync(model, enabled=True):
                strategy.backward(nn.functional.mse_loss(forward(x[:half]), y[:half]) / 2, model)
            # the gradients stayed local (unreduced) until the synchronised backward below
            assert all(p.grad is None for p in model.parameters())
            strategy.backward(nn.functional.mse_loss(forward(x[half:]), y[half:]) / 2, model)
        else:
            strategy.backward(nn.functional.mse_loss(forward(x), y), model)
        if step == 0:
            norms.append(float(strategy.clip_gradients_norm(model, optimizer, max_norm=0.05)))
        if step == 2:
            strategy.clip_gradients_value(model, optimizer, clip_val=0.01)
        strategy.optimizer_step(optimizer)
        optimizer.zero_grad()
    return norms


def _assert_close(actual: dict, expected: dict, atol: float) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=atol, rtol=0, msg=key)


def _each_sharding_strategy(rank: int, world_size: int) -> None:
    expected, expected_norms = _reference()
    configurations = [
        {"sharding_strategy": "FULL_SHARD"},
        {"sharding_strategy": "SHARD_GRAD_OP"},
        {"sharding_strategy": "NO_SHARD"},
        {"sharding_strategy": "HYBRID_SHARD"},  # one node: (1 replica, 2 shards)
        {"sharding_strategy": "HYBRID_SHARD", "device_mesh": (2, 1)},
    ]
    for config in configurations:
        strategy = _strategy(world_size, auto_wrap_policy={Block, nn.Linear}, **config)
        torch.manual_seed(0)
        model = Net()
        # an optimizer created before sharding is pointed at the sharded parameters
        model, [optimizer] = strategy.setup_module_and_optimizers(model, [torch.optim.SGD(model.parameters(), lr=0.1)])
        assert all(isinstance(p, DTensor) for p in model.parameters())
        mesh_shape = tuple(strategy.device_mesh.shape)
        assert mesh_shape == {"NO_SHARD": (2, 1), "HYBRID_SHARD": config.get("device_mesh", (1, 2))}.get(
            config["sharding_strategy"], (2,)
        ), config
        norms = _train(strategy, model, optimizer, rank, world_size)
        assert norms == pytest.approx(expected_norms, rel=1e-5), config
        _assert_close(_full(model), expected, atol=1e-5)
        if config["sharding_strategy"] == "FULL_SHARD":
            _check_nonfinite_norm(strategy, model, optimizer, rank)


def _check_nonfinite_norm(strategy, model, optimizer, rank):
    x, y = _batches()[0]
    strategy.backward(nn.functional.mse_loss(model(x), y), model)
    weight = model.inp.weight
    if rank == 0:  # only one process's shard holds the NaN, every process sees a non-finite total
        weight.grad.to_local()[0, 0] = float("nan")
    before = [p.grad.to_local().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match=r"not finite"):
        strategy.clip_gradients_norm(model, optimizer, max_norm=1.0)
    for grad, saved in zip([p.grad.to_local() for p in model.parameters()], before):
        torch.testing.assert_close(grad, saved, equal_nan=True)
    norm = strategy.clip_gradients_norm(model, optimizer, max_norm=1.0, error_if_nonfinite=False)
    assert math.isnan(float(norm))


def test_every_sharding_strategy_trains_like_one_process_with_clipping_and_accumulation():
    run_processes(_each_sharding_strategy, world_size=2)


def _mixed_precision_offload_checkpointing_and_meta_init(rank: int, world_size: int) -> None:
    expected, _ = _reference()
    # bf16-mixed: the FSDPPrecision policy all-gathers bf16 parameters; the sharded parameters stay float32
    strategy = _strategy(
        world_size,
        precision=FSDPPrecision("bf16-mixed"),
        auto_wrap_policy={Block},
        activation_checkpointing_policy={Block},
    )
    torch.manual_seed(0)
    model = strategy.setup_module(Net())
    seen = []
    model.blocks[0].linear.register_forward_pre_hook(lambda module, args: seen.append(module.weight.dtype))
    optimizer = strategy.setup_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))

    def forward(x):
        with strategy.precision.forward_context():
            return model(x).float()

    _train(strategy, model, optimizer, rank, world_size, forward=forward)
    assert set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    _assert_close(_full(model), expected, atol=3e-2)
    # activation checkpointing: each block's forward runs again in backward (4 forwards + 4 recomputations)
    assert model.blocks[0].forward_calls == 8

    # cpu offload ("fsdp_cpu_offload") with a full state dict, and meta-device initialisation
    offload = STRATEGY_REGISTRY.create(
        "fsdp_cpu_offload", parallel_devices=[torch.device("cpu")] * world_size, timeout=TIMEOUT, state_dict_type="full"
    )
    offload.setup_environment()
    assert type(offload.offload_policy()).__name__ == "CPUOffloadPolicy"
    with offload.module_init_context(empty_init=True):
        torch.manual_seed(0)
        model = Net()
    assert all(p.is_meta for p in model.parameters())
    model = offload.setup_module(model)
    torch.manual_seed(0)
    _assert_close(_full(model), Net().state_dict(), atol=0)  # exactly the values of a normal init
    optimizer = offload.setup_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    _train(offload, model, optimizer, rank, world_size)
    full = offload.get_module_state_dict(model)
    if rank == 0:
        assert all(not isinstance(v, DTensor) and v.device.type == "cpu" for v in full.values())
        _assert_close(full, expected, atol=1e-5)
    else:
        assert full == {}


def test_bf16_mixed_cpu_offload_activation_checkpointing_and_meta_init():
    run_processes(_mixed_precision_offload_checkpointing_and_meta_init, world_size=2)


def _save_and_resume(rank: int, world_size: int, directory: str) -> dict[str, torch.Tensor]:
    sharded, full_file = os.path.join(directory, "sharded"), os.path.join(directory, "full.ckpt")
    strategy = _strategy(world_size, auto_wrap_policy={Block})
    full_strategy = _strategy(world_size, state_dict_type="full")
    torch.manual_seed(0)
    model = strategy.setup_module(Net())
    optimizer = strategy.setup_optimizer(torch.optim.Adam(model.parameters(), lr=0.01))
    x, y = _batches()[0]

    def step(model, optimizer):
        strategy.backward(nn.functional.mse_loss(model(x), y), model)
        optimizer.step()
        optimizer.zero_grad()

    step(model, optimizer)
    strategy.save_checkpoint(sharded, {"model": model, "optimizer": optimizer, "step": 1})
    step(model, optimizer)
    # overwriting replaces the checkpoint as a whole, leaving no staging directories behind
    strategy.save_checkpoint(sharded, {"model": model, "optimizer": optimizer, "step": 2, "note": "second"})
    full_strategy.save_checkpoint(full_file, {"model": model, "optimizer": optimizer, "step": 2})
    assert sorted(os.listdir(directory)) == ["full.ckpt", "sharded"]

    torch.manual_seed(123)  # different weights, restored from the checkpoint
    restored = strategy.setup_module(Net())
    restored_optimizer = strategy.setup_optimizer(torch.optim.Adam(restored.parameters(), lr=0.01))
    state = {"model": restored, "optimizer": restored_optimizer, "step": 0}
    remainder = strategy.load_checkpoint(sharded, state)
    assert state["step"] == 2
    assert remainder == {"note": "second"}
    _assert_close(_full(restored), _full(model), atol=0)
    step(model, optimizer)
    step(restored, restored_optimizer)  # the optimizer state came back too: the next step is identical
    _assert_close(_full(restored), _full(model), atol=0)

    # a full file loads into a sharded module as well
    torch.manual_seed(7)
    from_file = strategy.setup_module(Net())
    file_optimizer = strategy.setup_optimizer(torch.optim.Adam(from_file.parameters(), lr=0.01))
    assert full_strategy.load_checkpoint(full_file, {"model": from_file, "optimizer": file_optimizer}) == {"step": 2}
    step(from_file, file_optimizer)
    _assert_close(_full(from_file), _full(restored), atol=0)
    weights = _full(restored)  # collective: every process gathers
    return weights if rank == 0 else {}


def _load_at_world_size_one(rank: int, world_size: int, directory: str) -> dict[str, torch.Tensor]:
    strategy = _strategy(world_size)
    torch.manual_seed(5)
    model = strategy.setup_module(Net())
    optimizer = strategy.setup_optimizer(torch.optim.Adam(model.parameters(), lr=0.01))
    remainder = strategy.load_checkpoint(os.path.join(directory, "sharded"), {"model": model, "optimizer": optimizer})
    assert remainder == {"step": 2, "note": "second"}
    assert len(optimizer.state) == len(list(model.parameters()))
    return _full(model)


def test_sharded_checkpoint_saved_by_two_processes_loads_in_one_and_into_a_plain_module(tmp_path):
    [after_resume, _] = run_processes(_save_and_resume, str(tmp_path), world_size=2)
    sharded = tmp_path / "sharded"

    # one process, FSDP over a world of size 1 (the checkpoint holds the weights from before the resumed step)
    [loaded] = run_processes(_load_at_world_size_one, str(tmp_path), world_size=1)

    # one process, no process group at all, a plain module
    plain = Net()
    state = {"model": plain}
    remainder = FSDPStrategy().load_checkpoint(sharded, state, strict=True)
    assert set(remainder) == {"optimizer", "step", "note"}
    _assert_close(plain.state_dict(), loaded, atol=0)

    consolidated = torch.load(consolidate_sharded_checkpoint(sharded), weights_only=True)
    _assert_close(consolidated["model"], loaded, atol=0)
    assert consolidated["step"] == 2
    assert set(consolidated["optimizer"]["state"]) == set(loaded)

    full = torch.load(tmp_path / "full.ckpt", weights_only=True)
    _assert_close(full["model"], loaded, atol=0)
    # the resumed step changed the weights after the save
    assert not torch.equal(after_resume["head.weight"], loaded["head.weight"])


def _launched(strategy: FSDPStrategy) -> dict[str, object]:
    strategy.setup_environment()  # creates (and owns) the process group
    torch.manual_seed(0)
    model = strategy.setup_module(Net())
    optimizer = strategy.setup_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = _batches()[0]
    per_rank = len(x) // strategy.world_size
    rows = slice(strategy.global_rank * per_rank, (strategy.global_rank + 1) * per_rank)
    strategy.backward(nn.functional.mse_loss(model(x[rows]), y[rows]), model)
    optimizer.step()
    weights = _full(model)
    strategy.teardown()
    return {"weights": weights, "group_left": not torch.distributed.is_initialized()}


def test_spawned_processes_set_up_and_tear_down_their_own_process_group():
    strategy = FSDPStrategy(
        parallel_devices=[torch.device("cpu")] * 2, start_method="spawn", timeout=TIMEOUT, auto_wrap_policy={Block}
    )
    strategy.complete()
    result = strategy.launcher.launch(_launched, strategy)
    assert result["group_left"]
    torch.manual_seed(0)
    expected = Net()
    x, y = _batches()[0]
    nn.functional.mse_loss(expected(x), y).backward()
    torch.optim.SGD(expected.parameters(), lr=0.1).step()
    _assert_close(result["weights"], expected.state_dict(), atol=1e-6)


@RunIf(min_cuda_gpus=2)
def test_fsdp_on_two_cuda_devices_trains_like_one_process():
    run_processes(_cuda_training, world_size=2, backend="nccl")


def _cuda_training(rank: int, world_size: int) -> None:
    expected, _ = _reference()
    devices = [torch.device("cuda", i) for i in range(world_size)]
    strategy = FSDPStrategy(parallel_devices=devices, timeout=TIMEOUT, auto_wrap_policy={Block})
    strategy.setup_environment()
    torch.manual_seed(0)
    model = strategy.setup_module(Net())
    optimizer = strategy.setup_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    _train(strategy, model, optimizer, rank, world_size)
    _assert_close({k: v.cpu() for k, v in _full(model).items()}, expected, atol=1e-4)
