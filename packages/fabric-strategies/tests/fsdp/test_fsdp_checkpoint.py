"""Sharded and full checkpoints of the FSDP strategy in one process (plain modules, no process group).

The same code paths with sharded modules and two processes run in test_fsdp_distributed.py.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from fabric_io import is_sharded_checkpoint
from fabric_strategies import FSDPStrategy, MissingStateKeyError


class Counter:
    """A stateful object (not a module or optimizer)."""

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


def _trained(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    return model, optimizer


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_sharded_round_trip_restores_modules_optimizers_stateful_and_plain_values(tmp_path):
    model, optimizer = _trained()
    strategy = FSDPStrategy()
    strategy.save_checkpoint(tmp_path / "ckpt", {"model": model, "opt": optimizer, "counter": Counter(4), "step": 3})
    assert is_sharded_checkpoint(tmp_path / "ckpt")

    restored, restored_optimizer = _trained(seed=1)
    counter = Counter()
    state = {"model": restored, "opt": restored_optimizer, "counter": counter, "step": 0}
    assert strategy.load_checkpoint(tmp_path / "ckpt", state) == {}
    assert _same_weights(restored, model)
    assert state["step"] == 3
    assert counter.value == 4
    saved, loaded = optimizer.state_dict(), restored_optimizer.state_dict()
    assert torch.equal(saved["state"][0]["exp_avg"], loaded["state"][0]["exp_avg"])
    # a filter keeps only some entries of a module's state
    strategy.save_checkpoint(tmp_path / "w", {"model": model}, filter={"model": lambda name, _: "weight" in name})
    assert set(strategy.load_checkpoint(tmp_path / "w")["model"]) == {"0.weight", "2.weight"}


def test_strict_loading_names_what_does_not_match(tmp_path):
    model, _ = _trained()
    strategy = FSDPStrategy()
    strategy.save_checkpoint(tmp_path / "ckpt", {"model": model, "step": 1})
    other = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2), nn.Linear(2, 2))
    with pytest.raises(MissingStateKeyError, match=r"missing keys \['3.bias', '3.weight'\]"):
        strategy.load_checkpoint(tmp_path / "ckpt", {"model": other})
    strategy.load_checkpoint(tmp_path / "ckpt", {"model": other}, strict=False)
    assert torch.equal(other[0].weight, model[0].weight)
    with pytest.raises(MissingStateKeyError, match=r"\['epoch'\]"):
        strategy.load_checkpoint(tmp_path / "ckpt", {"model": model, "epoch": 0})
    state = {"epoch": 0}
    assert set(strategy.load_checkpoint(tmp_path / "ckpt", state, strict=False)) == {"model", "step"}
    assert state == {"epoch": 0}
    with pytest.raises(TypeError, match=r"optimizer .* together with its module"):
        strategy.load_checkpoint(tmp_path / "ckpt", torch.optim.SGD(model.parameters(), lr=0.1))


def test_raw_module_state_directory_and_remainder(tmp_path):
    model, _ = _trained()
    strategy = FSDPStrategy()
    strategy.save_checkpoint(tmp_path / "raw", model.state_dict())  # a directory holding a module's raw state dict
    restored, _ = _trained(seed=2)
    strategy.load_checkpoint(tmp_path / "raw", restored)
    assert _same_weights(restored, model)
    strategy.save_checkpoint(tmp_path / "ckpt", {"model": model, "notes": {"a": [1, 2]}})
    fresh, _ = _trained(seed=3)
    assert strategy.load_checkpoint(tmp_path / "ckpt", {"model": fresh}) == {"notes": {"a": [1, 2]}}


def test_full_checkpoints_are_one_file_and_replace_a_sharded_directory_only_when_written(tmp_path):
    model, optimizer = _trained()
    sharded, full = FSDPStrategy(), FSDPStrategy(state_dict_type="full")
    sharded.save_checkpoint(tmp_path / "ckpt", {"model": model})
    full.save_checkpoint(tmp_path / "ckpt", {"model": model, "opt": optimizer, "step": 5})
    assert os.path.isfile(tmp_path / "ckpt")
    assert os.listdir(tmp_path) == ["ckpt"]
    loaded = torch.load(tmp_path / "ckpt", weights_only=True)
    assert set(loaded) == {"model", "opt", "step"}
    assert set(loaded["opt"]["state"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}  # keyed by parameter name

    restored, restored_optimizer = _trained(seed=1)
    assert full.load_checkpoint(tmp_path / "ckpt", {"model": restored, "opt": restored_optimizer}) == {"step": 5}
    assert _same_weights(restored, model)
    # and a sharded save over the file replaces it with a directory
    sharded.save_checkpoint(tmp_path / "ckpt", {"model": model})
    assert is_sharded_checkpoint(tmp_path / "ckpt")
    assert os.listdir(tmp_path) == ["ckpt"]
    # a directory that is not a checkpoint is never replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"Refusing to replace .*mine.* not a sharded checkpoint"):
        full.save_checkpoint(tmp_path / "mine", {"model": model})
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path):
    model, _ = _trained()
    strategy = FSDPStrategy()
    strategy.save_checkpoint(tmp_path / "ckpt", {"model": model, "step": 1})
    with pytest.raises(RuntimeError, match=r"Saving the sharded checkpoint .* pickle"):
        strategy.save_checkpoint(tmp_path / "ckpt", {"model": model, "bad": lambda: None})
    assert strategy.load_checkpoint(tmp_path / "ckpt")["step"] == 1
    assert [name for name in os.listdir(tmp_path) if not name.startswith(".")] == ["ckpt"]


def test_errors_for_optimizers_without_their_module_and_remote_sharded_paths(tmp_path):
    model, optimizer = _trained()
    strategy = FSDPStrategy()
    with pytest.raises(ValueError, match=r"no module that owns the parameters"):
        strategy.save_checkpoint(tmp_path / "ckpt", {"opt": optimizer})
    with pytest.raises(ValueError, match=r"URL 's3://bucket/ckpt'.*state_dict_type='full'"):
        strategy.save_checkpoint("s3://bucket/ckpt", {"model": model})
    with pytest.raises(TypeError, match=r"`state` must be a dict"):
        strategy.save_checkpoint(tmp_path / "ckpt", [model])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`state` must be a module, an optimizer or a dict"):
        strategy.load_checkpoint(tmp_path / "ckpt", [model])  # type: ignore[arg-type]


def test_a_mismatch_names_the_state_entry_and_the_checkpoint(tmp_path):
    model, _ = _trained()
    other = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2), nn.Linear(2, 2))
    sharded = FSDPStrategy()
    sharded.save_checkpoint(tmp_path / "ckpt", {"model": model})
    with pytest.raises(MissingStateKeyError, match=r"(?s)state\['model'\] from the checkpoint '.*ckpt': .*\['3.bias'"):
        sharded.load_checkpoint(tmp_path / "ckpt", {"model": other})
    full = FSDPStrategy(state_dict_type="full")
    full.save_checkpoint(tmp_path / "full.pt", {"model": model})
    unexpected = r"(?s)state\['model'\] from the checkpoint '.*full\.pt': .*Unexpected key"
    with pytest.raises(RuntimeError, match=unexpected) as info:
        full.load_checkpoint(tmp_path / "full.pt", {"model": nn.Sequential(nn.Linear(4, 6))})
    assert type(info.value) is RuntimeError
    torch.save(model.state_dict(), tmp_path / "raw.pt")
    with pytest.raises(RuntimeError, match=r"(?s)the Sequential module from the checkpoint '.*raw\.pt'"):
        full.load_checkpoint(tmp_path / "raw.pt", nn.Sequential(nn.Linear(4, 5)))
