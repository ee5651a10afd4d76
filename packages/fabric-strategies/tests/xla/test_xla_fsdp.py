"""XLAFSDPStrategy against the fake torch_xla: wrapping policies, the optimizer and training step, clipping, and
sharded and full checkpoints (the fake pretends to be one of two mirror replicas)."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn

from fabric_strategies import STRATEGY_REGISTRY, XLAFSDPStrategy, XLAStrategy
from fabric_strategies.xla.fsdp_checkpoint import shard_file_name
from fabric_testing import PicklePayload, TinyMLP


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(Block(), Block())
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


def _started(fake: ModuleType, world_size: int = 2, **kwargs: Any) -> XLAFSDPStrategy:
    fake.state.world_size = world_size
    strategy = XLAFSDPStrategy(**kwargs)
    strategy.setup_environment()
    return strategy


def _wrapper_type() -> type:
    from torch_xla.distributed.fsdp import XlaFullyShardedDataParallel

    return XlaFullyShardedDataParallel  # type: ignore[no-any-return]


def test_configuration_is_checked(fake_xla: ModuleType) -> None:
    assert isinstance(STRATEGY_REGISTRY.create("xla_fsdp"), XLAFSDPStrategy)
    assert issubclass(XLAFSDPStrategy, XLAStrategy)
    with pytest.raises(ValueError, match=r"Unknown state_dict_type 'partial'. Choose one of: sharded, full"):
        XLAFSDPStrategy(state_dict_type="partial")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"auto_wrap_policy must hold torch.nn.Module subclasses"):
        XLAFSDPStrategy(auto_wrap_policy={int})  # type: ignore[arg-type]
    strategy = XLAFSDPStrategy(compute_dtype=torch.bfloat16, sequential_save=True)
    assert strategy.fsdp_kwargs == {"compute_dtype": torch.bfloat16}
    assert strategy.sequential_save
    assert strategy.state_dict_type == "sharded"


def test_wrapping_with_policies_and_activation_checkpointing(fake_xla: ModuleType) -> None:
    strategy = _started(
        fake_xla, auto_wrap_policy={nn.Linear}, activation_checkpointing_policy={Block}, reshard_after_forward=False
    )
    wrapped = strategy.setup_module(Net())
    wrapper = _wrapper_type()
    assert isinstance(wrapped, wrapper)
    assert wrapped.fake_kwargs == {"reshard_after_forward": False}
    inner = wrapped.module
    assert all(isinstance(block, wrapper) and block.module.fake_checkpointed for block in inner.blocks)
    assert isinstance(inner.head, wrapper), "classes of the auto-wrap policy get their own unit"
    assert fake_xla.state.arguments("checkpoint_module") == ["Block", "Block"]
    callable_policy = _started(fake_xla, auto_wrap_policy=lambda module, recurse, unwrapped_params: False)
    assert not isinstance(callable_policy.setup_module(Net()).module.head, wrapper)


def test_model_first_then_the_optimizer(fake_xla: ModuleType) -> None:
    strategy = _started(fake_xla)
    model = Net()
    with pytest.raises(NotImplementedError, match=r"fabric.setup_module\(model\)"):
        strategy.setup_module_and_optimizers(model, [torch.optim.SGD(model.parameters(), lr=0.1)])
    unsharded = torch.optim.SGD(model.parameters(), lr=0.1)
    wrapped = strategy.setup_module(model)
    with pytest.raises(ValueError, match="parameters of the model before it was sharded"):
        strategy.setup_optimizer(torch.optim.SGD(TinyMLP().parameters(), lr=0.1))
    assert strategy.setup_optimizer(unsharded) is unsharded, "the fake shards in place: the parameters are sharded"
    optimizer = strategy.setup_optimizer(torch.optim.SGD(wrapped.parameters(), lr=0.1))
    before = [p.detach().clone() for p in wrapped.parameters()]
    strategy.backward(wrapped(torch.randn(2, 4)).sum(), wrapped)
    strategy.optimizer_step(optimizer)
    assert "optimizer_step" not in fake_xla.state.names(), "FSDP reduced the gradients: no xm.optimizer_step"
    assert "sync" in fake_xla.state.names()
    assert not any(torch.equal(a, b) for a, b in zip(before, wrapped.parameters()))


def test_clipping_and_no_backward_sync(fake_xla: ModuleType) -> None:
    strategy = _started(fake_xla)
    model = Net()
    wrapped = strategy.setup_module(model)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    with strategy.no_backward_sync(model, enabled=True):
        assert wrapped.no_sync_active
        strategy.backward(wrapped(torch.randn(2, 4)).sum(), wrapped)
    norm = strategy.clip_gradients_norm(model, optimizer, max_norm=1e-3)
    assert fake_xla.state.arguments("clip_grad_norm_") == [{"max_norm": 1e-3, "norm_type": 2.0}]
    assert norm > 1e-3
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in wrapped.parameters()]))
    assert total <= 1.01e-3
    next(wrapped.parameters()).grad[0] = float("inf")
    with pytest.raises(RuntimeError, match="non-finite"):
        strategy.clip_gradients_norm(wrapped, optimizer, max_norm=1.0)
    strategy.clip_gradients_norm(wrapped, optimizer, max_norm=1.0, error_if_nonfinite=False)
    with pytest.raises(NotImplementedError, match="by norm only"):
        strategy.clip_gradients_value(wrapped, optimizer, clip_val=1.0)
    calls = len(fake_xla.state.arguments("clip_grad_norm_"))
    with pytest.raises(ValueError, match=r"max_norm=-1\.0"):
        strategy.clip_gradients_norm(wrapped, optimizer, max_norm=-1.0)
    with pytest.raises(ValueError, match="norm_type=0"):
        strategy.clip_gradients_norm(wrapped, optimizer, max_norm=1.0, norm_type=0)
    assert len(fake_xla.state.arguments("clip_grad_norm_")) == calls  # refused before reaching the wrapper
    with pytest.raises(TypeError, match="needs a model set up by XLAFSDPStrategy"):
        strategy.no_backward_sync(TinyMLP(), enabled=True)


def test_sharded_checkpoint_round_trip(fake_xla: ModuleType, tmp_path: Path) -> None:
    strategy = _started(fake_xla, sequential_save=True)
    model = Net()
    wrapped = strategy.setup_module(model)
    optimizer = torch.optim.Adam(wrapped.parameters(), lr=0.1)
    strategy.backward(wrapped(torch.randn(2, 4)).sum(), wrapped)
    strategy.optimizer_step(optimizer)
    strategy.save_checkpoint(tmp_path / "ckpt", {"model": model, "optimizer": optimizer, "step": 5})
    shard = tmp_path / "ckpt" / "checkpoint_rank-00000000-of-00000002.pth"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [shard.name], "this process writes its shard"
    saved = torch.load(shard, weights_only=True)
    assert saved["shard_metadata"]["world_size"] == 2
    assert all(name.startswith("_fsdp_wrapped_module.") for name in saved["model"])
    assert [c for c in fake_xla.state.arguments("rendezvous") if c.startswith("xla_fsdp_save")] == [
        "xla_fsdp_save_0",
        "xla_fsdp_save_1",
    ], "sequential_save: one process after the other"

    other = _started(fake_xla)
    fresh = other.setup_module(Net())
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=0.1)
    state: dict[str, Any] = {"model": fresh, "optimizer": fresh_optimizer, "step": 0}
    assert other.load_checkpoint(tmp_path / "ckpt", state) == {}
    assert state["step"] == 5
    assert all(torch.equal(a, b) for a, b in zip(wrapped.parameters(), fresh.parameters()))
    assert fresh_optimizer.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()

    bigger = _started(fake_xla, world_size=4)
    with pytest.raises(ValueError, match="saved by 2 processes; this run has 4"):
        bigger.load_checkpoint(tmp_path / "ckpt", {"model": bigger.setup_module(Net())})
    with pytest.raises(ValueError, match="is a sharded checkpoint: pass the state"):
        other.load_checkpoint(tmp_path / "ckpt", fresh)


def test_full_checkpoint_consolidates_on_rank_zero(fake_xla: ModuleType, tmp_path: Path) -> None:
    strategy = _started(fake_xla, world_size=1, state_dict_type="full")  # one process writes every shard there is
    model = Net()
    wrapped = strategy.setup_module(model)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    with pytest.raises(
        ValueError, match=r"saves the model weights only, but the state holds optimizers \['optimizer'\]"
    ):
        strategy.save_checkpoint(tmp_path / "full.pt", {"model": model, "optimizer": optimizer})
    strategy.save_checkpoint(
        tmp_path / "full.pt", {"model": model, "epoch": 3}, filter={"model": lambda k, v: "head" not in k}
    )
    assert fake_xla.state.arguments("consolidate_sharded_state_dicts") == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.pt"], "the scratch shards are removed"
    saved = torch.load(tmp_path / "full.pt", weights_only=True)
    assert sorted(saved["model"]) == [
        "blocks.0.linear.bias",
        "blocks.0.linear.weight",
        "blocks.1.linear.bias",
        "blocks.1.linear.weight",
    ]
    assert saved["epoch"] == 3

    plain = Net()
    assert strategy.load_checkpoint(tmp_path / "full.pt", {"model": plain}, strict=False) == {"epoch": 3}
    assert torch.equal(plain.blocks[0].linear.weight, model.blocks[0].linear.weight)
    with pytest.raises(ValueError, match="loads into the model before it is set up"):
        strategy.load_checkpoint(tmp_path / "full.pt", {"model": wrapped})
    with pytest.raises(ValueError, match="holds no optimizer state"):
        strategy.load_checkpoint(tmp_path / "full.pt", {"model": plain, "optimizer": optimizer})
    with pytest.raises(ValueError, match="keeps optimizer states in shards"):
        strategy.load_checkpoint(tmp_path / "full.pt", optimizer)


def test_checkpoint_mistakes(fake_xla: ModuleType, tmp_path: Path) -> None:
    strategy = _started(fake_xla)
    first, second = strategy.setup_module(Net()), strategy.setup_module(Net())
    with pytest.raises(ValueError, match=r"without a model it set up: the state holds \['step'\]"):
        strategy.save_checkpoint(tmp_path / "c", {"step": 1})
    with pytest.raises(ValueError, match=r"several: \['a', 'b'\]"):
        strategy.save_checkpoint(tmp_path / "c", {"a": first, "b": second})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        strategy.load_checkpoint(tmp_path / "missing", {"model": first})
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no XLA FSDP shard files"):
        strategy.load_checkpoint(tmp_path / "empty", {"model": first})


def test_hostile_shards_are_refused(fake_xla: ModuleType, tmp_path: Path) -> None:
    strategy = _started(fake_xla)
    model = strategy.setup_module(Net())
    marker = tmp_path / "ran"
    strategy.save_checkpoint(tmp_path / "ckpt", {"model": model, "extra": PicklePayload(marker)})
    assert not marker.exists(), "saving must not run the payload"
    with pytest.raises(ValueError, match=r"io\.open.*weights_only=False"):
        strategy.load_checkpoint(tmp_path / "ckpt", {"model": model})
    assert not marker.exists(), "the payload ran while loading with the default settings"
    strategy.load_checkpoint(tmp_path / "ckpt", {"model": model}, strict=False, weights_only=False)
    assert marker.exists(), "weights_only=False did not read the shard: the test checkpoint is not hostile"

    # a shard that is a symbolic link into another checkpoint is not read, with or without the opt-out
    strategy.save_checkpoint(tmp_path / "other", {"model": model})
    shard = shard_file_name(0, 2)
    (tmp_path / "ckpt" / shard).unlink()
    (tmp_path / "ckpt" / shard).symlink_to(tmp_path / "other" / shard)
    for weights_only in (None, False):
        with pytest.raises(ValueError, match=re.escape(repr(shard)) + ".*outside the checkpoint directory"):
            strategy.load_checkpoint(tmp_path / "ckpt", {"model": model}, weights_only=weights_only)
