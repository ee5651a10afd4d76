"""Checkpoint save/load through the strategy: real files, stateful objects, filters, strictness, weights_only."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch

from fabric_io import TorchCheckpointIO, UnsafeCheckpointError
from fabric_strategies import MissingStateKeyError, SingleDeviceStrategy


class Counter:
    """A stateful object that is neither a module nor an optimizer."""

    def __init__(self, count: int = 0) -> None:
        self.count = count

    def state_dict(self) -> dict[str, int]:
        return {"count": self.count}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.count = state_dict["count"]


class Custom:
    """An arbitrary object: torch.load refuses it with weights_only=True."""

    def __init__(self, value: int) -> None:
        self.value = value


def _trained() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_save_and_load_restore_every_object_in_place_and_return_the_rest(tmp_path):
    strategy = SingleDeviceStrategy()
    model, optimizer = _trained()
    path = tmp_path / "ckpt.pt"
    strategy.save_checkpoint(
        path, {"model": model, "optimizer": optimizer, "counter": Counter(7), "step": 3, "extra": "x"}
    )

    fresh_model = torch.nn.Linear(3, 2)
    fresh_optimizer = torch.optim.Adam(fresh_model.parameters(), lr=0.1)
    counter = Counter()
    state = {"model": fresh_model, "optimizer": fresh_optimizer, "counter": counter, "step": 0}
    remainder = strategy.load_checkpoint(path, state)
    assert remainder == {"extra": "x"}
    assert torch.equal(fresh_model.weight, model.weight)
    assert fresh_optimizer.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    assert counter.count == 7
    assert state["step"] == 3  # plain values are replaced in the given dict
    assert state["model"] is fresh_model


def test_load_without_state_returns_everything(tmp_path):
    strategy = SingleDeviceStrategy()
    strategy.save_checkpoint(tmp_path / "c.pt", {"a": 1, "b": torch.ones(2)})
    loaded = strategy.load_checkpoint(tmp_path / "c.pt")
    assert loaded["a"] == 1
    assert torch.equal(loaded["b"], torch.ones(2))


def test_filter_keeps_only_selected_entries(tmp_path):
    strategy = SingleDeviceStrategy()
    model, _ = _trained()
    strategy.save_checkpoint(
        tmp_path / "f.pt",
        {"model": model, "meta": {"keep": 1, "drop": 2}},
        filter={"model": lambda name, _: name.endswith("weight"), "meta": lambda name, _: name == "keep"},
    )
    loaded = strategy.load_checkpoint(tmp_path / "f.pt")
    assert list(loaded["model"]) == ["weight"]
    assert loaded["meta"] == {"keep": 1}
    with pytest.raises(ValueError, match=r"\['nope'\].*model"):
        strategy.save_checkpoint(tmp_path / "g.pt", {"model": model}, filter={"nope": lambda n, v: True})
    with pytest.raises(TypeError, match=r"callables.*model"):
        strategy.save_checkpoint(tmp_path / "g.pt", {"model": model}, filter={"model": True})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"dict.*list"):
        strategy.save_checkpoint(tmp_path / "g.pt", {"model": model}, filter=[])  # type: ignore[arg-type]


def test_strict_loading_names_the_missing_keys(tmp_path):
    strategy = SingleDeviceStrategy()
    strategy.save_checkpoint(tmp_path / "s.pt", {"a": 1})
    with pytest.raises(MissingStateKeyError, match=r"\['b', 'c'\].*holds \['a'\].*strict=False") as info:
        strategy.load_checkpoint(tmp_path / "s.pt", {"a": 0, "b": 0, "c": 0})
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, ValueError)
    state = {"a": 0, "b": 5}
    assert strategy.load_checkpoint(tmp_path / "s.pt", state, strict=False) == {}
    assert state == {"a": 1, "b": 5}


def test_module_strictness_is_passed_to_load_state_dict(tmp_path):
    strategy = SingleDeviceStrategy()
    strategy.save_checkpoint(tmp_path / "m.pt", {"model": {"weight": torch.zeros(2, 3)}})
    with pytest.raises(RuntimeError, match=r"bias"):
        strategy.load_checkpoint(tmp_path / "m.pt", {"model": torch.nn.Linear(3, 2)})
    model = torch.nn.Linear(3, 2)
    strategy.load_checkpoint(tmp_path / "m.pt", {"model": model}, strict=False)
    assert torch.equal(model.weight, torch.zeros(2, 3))


def test_raw_module_and_optimizer_loading(tmp_path):
    strategy = SingleDeviceStrategy()
    model, optimizer = _trained()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    fresh = torch.nn.Linear(3, 2)
    assert strategy.load_checkpoint(tmp_path / "model.pt", fresh) == {}
    assert torch.equal(fresh.weight, model.weight)
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=0.1)
    strategy.load_checkpoint(tmp_path / "optimizer.pt", fresh_optimizer)
    assert fresh_optimizer.state_dict()["state"][0]["step"] == 1


def test_weights_only_is_passed_through(tmp_path):
    strategy = SingleDeviceStrategy()
    strategy.save_checkpoint(tmp_path / "w.pt", {"obj": Custom(3)})
    with pytest.raises(ValueError, match=r"w.pt"):
        strategy.load_checkpoint(tmp_path / "w.pt")  # weights_only=True by default refuses the object
    assert strategy.load_checkpoint(tmp_path / "w.pt", weights_only=False)["obj"].value == 3


def test_missing_file_and_bad_state_are_reported(tmp_path):
    strategy = SingleDeviceStrategy()
    with pytest.raises(FileNotFoundError, match=r"missing.pt"):
        strategy.load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(TypeError, match=r"dict.*list"):
        strategy.save_checkpoint(tmp_path / "x.pt", [1, 2])  # type: ignore[arg-type]
    strategy.save_checkpoint(tmp_path / "x.pt", {"a": 1})
    with pytest.raises(TypeError, match=r"module, an optimizer or a dict.*list"):
        strategy.load_checkpoint(tmp_path / "x.pt", [1])  # type: ignore[arg-type]


def test_ddp_wrapped_modules_save_their_inner_state_dict(tmp_path):
    # the wrapper's "module." prefix never reaches the file (single-process gloo group for the wrapper)
    import torch.distributed as dist

    from fabric_strategies import destroy_process_group_cleanly

    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1, timeout=timedelta(seconds=30))
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
        strategy = SingleDeviceStrategy()
        strategy.save_checkpoint(tmp_path / "d.pt", {"model": wrapped})
        assert set(strategy.load_checkpoint(tmp_path / "d.pt")["model"]) == {"weight", "bias"}
    finally:
        destroy_process_group_cleanly(wrapped)


def test_a_strict_mismatch_names_the_state_entry_and_the_file_and_keeps_torchs_text(tmp_path):
    strategy = SingleDeviceStrategy()
    path = tmp_path / "ckpt.pt"
    strategy.save_checkpoint(path, {"model": torch.nn.Linear(3, 2), "step": 1})
    with pytest.raises(RuntimeError, match=r"(?s)state\['model'\] from the checkpoint '.*ckpt\.pt'") as info:
        strategy.load_checkpoint(path, {"model": torch.nn.Linear(3, 4)})  # wrong shapes
    assert "size mismatch for weight" in str(info.value)  # torch's detail stays
    assert type(info.value) is RuntimeError
    assert "size mismatch" in str(info.value.__cause__)
    with pytest.raises(RuntimeError, match=r"(?s)state\['model'\] from .*Unexpected key\(s\) in state_dict"):
        strategy.load_checkpoint(path, {"model": torch.nn.Linear(3, 2, bias=False)})  # wrong keys


def test_an_optimizer_that_does_not_fit_is_named_too(tmp_path):
    strategy = SingleDeviceStrategy()
    model, optimizer = _trained()
    strategy.save_checkpoint(tmp_path / "ckpt.pt", {"optimizer": optimizer})
    other = torch.optim.Adam([*model.parameters(), torch.nn.Parameter(torch.ones(1))], lr=0.1)
    with pytest.raises(ValueError, match=r"(?s)state\['optimizer'\] from the checkpoint '.*ckpt\.pt': .*size"):
        strategy.load_checkpoint(tmp_path / "ckpt.pt", {"optimizer": other})


def test_a_raw_state_dict_that_does_not_fit_names_the_object_and_the_file(tmp_path):
    strategy = SingleDeviceStrategy()
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "raw.pt")
    with pytest.raises(RuntimeError, match=r"(?s)the Linear module from the checkpoint '.*raw\.pt': .*size mismatch"):
        strategy.load_checkpoint(tmp_path / "raw.pt", torch.nn.Linear(5, 2))


class PermissiveIO(TorchCheckpointIO):
    """A third-party checkpoint IO whose own default (``weights_only=None``) unpickles everything."""

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return super().load_checkpoint(path, map_location, weights_only=False if weights_only is None else weights_only)


def test_a_custom_checkpoint_io_does_not_decide_the_default(tmp_path):
    strategy = SingleDeviceStrategy(checkpoint_io=PermissiveIO())
    strategy.save_checkpoint(tmp_path / "w.pt", {"obj": Custom(3)})
    with pytest.raises(UnsafeCheckpointError, match=r"w.pt"):
        strategy.load_checkpoint(tmp_path / "w.pt")
    assert strategy.load_checkpoint(tmp_path / "w.pt", weights_only=False)["obj"].value == 3
