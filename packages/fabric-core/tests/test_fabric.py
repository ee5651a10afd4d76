"""``Fabric`` in one process: arguments, set-up, the training step, utilities, checkpoints, callbacks and logging.

Behaviour across processes is tested in ``test_fabric_distributed.py`` and ``test_launch.py``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_core import Fabric, FabricDataLoader, FabricModule, FabricOptimizer, is_wrapped
from fabric_loggers import CSVLogger
from fabric_strategies import SingleDeviceStrategy
from fabric_testing import TinyMLP


@pytest.fixture(autouse=True)
def _seed_variables(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """seed_everything writes FABRIC_GLOBAL_SEED/FABRIC_SEED_WORKERS: let monkeypatch remove them afterwards."""
    for name in ("FABRIC_GLOBAL_SEED", "FABRIC_SEED_WORKERS"):
        monkeypatch.setenv(name, "0")  # recorded, so monkeypatch removes what seed_everything writes
        monkeypatch.delenv(name)
    return


def model_and_optimizer() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = TinyMLP()
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_properties_of_a_single_cpu_process() -> None:
    fabric = Fabric(accelerator="cpu")
    assert isinstance(fabric.strategy, SingleDeviceStrategy)
    assert fabric.accelerator is fabric.strategy.accelerator
    assert fabric.device == torch.device("cpu")
    assert (fabric.global_rank, fabric.local_rank, fabric.node_rank, fabric.world_size) == (0, 0, 0, 1)
    assert fabric.is_global_zero
    assert fabric.loggers == []
    assert fabric.logger is None


def test_arguments_are_keyword_only_and_validated() -> None:
    with pytest.raises(TypeError):
        Fabric("cpu")  # type: ignore[misc]
    with pytest.raises(ValueError, match="'nope'"):
        Fabric(strategy="nope")
    with pytest.raises(TypeError, match="not a logger"):
        Fabric(loggers=[object()])


def test_environment_variables_from_fabric_run_fill_the_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABRIC_PRECISION", "bf16-mixed")
    fabric = Fabric(accelerator="cpu")
    assert fabric.strategy.precision.precision == "bf16-mixed"
    with pytest.raises(ValueError, match="FABRIC_PRECISION"):
        Fabric(precision="64-true")


def test_launch_on_one_device_calls_the_function_with_fabric() -> None:
    fabric = Fabric(accelerator="cpu")
    assert fabric.launch(lambda f, x, y=0: (f, x + y), 1, y=2) == (fabric, 3)
    assert fabric.launch() is None
    with pytest.raises(TypeError, match="callable"):
        fabric.launch(3)  # type: ignore[arg-type]


def test_run_in_a_subclass_is_launched() -> None:
    class Trainer(Fabric):
        def run(self, value: int) -> tuple[Fabric, int]:
            return self, value * 2

    trainer = Trainer(accelerator="cpu")
    assert trainer.run(4) == (trainer, 8)
    with pytest.raises(NotImplementedError, match="override run"):
        Fabric(accelerator="cpu").run()


def test_several_processes_need_launch_first() -> None:
    fabric = Fabric(accelerator="cpu", strategy="ddp", devices=2)
    with pytest.raises(RuntimeError, match=r"fabric\.launch\(\)"):
        fabric.setup(TinyMLP())
    with pytest.raises(RuntimeError, match=r"fabric\.launch\(\)"):
        fabric.barrier()
    with pytest.raises(TypeError, match=r"ddp_spawn.*fabric\.launch\(train\)"):
        Fabric(accelerator="cpu", strategy="ddp_spawn", devices=2).launch()


def test_setup_wraps_and_trains() -> None:
    fabric = Fabric(accelerator="cpu")
    model, optimizer = model_and_optimizer()
    wrapped_model, wrapped_optimizer = fabric.setup(model, optimizer)
    assert isinstance(wrapped_model, FabricModule)
    assert wrapped_model.module is model
    assert isinstance(wrapped_optimizer, FabricOptimizer)
    assert wrapped_optimizer.optimizer is optimizer
    assert all(is_wrapped(x) for x in (wrapped_model, wrapped_optimizer))
    before = model.layer1.weight.detach().clone()
    loss = wrapped_model(torch.randn(4, 32)).sum()
    fabric.backward(loss)
    wrapped_optimizer.step()
    assert not torch.equal(before, model.layer1.weight)
    assert fabric.setup(TinyMLP()).__class__ is FabricModule


def test_setup_module_then_optimizers() -> None:
    fabric = Fabric(accelerator="cpu")
    model, optimizer = model_and_optimizer()
    wrapped = fabric.setup_module(model)
    assert wrapped.module is model
    assert isinstance(fabric.setup_optimizers(optimizer), FabricOptimizer)
    second = torch.optim.Adam(model.parameters())
    third = torch.optim.SGD(model.parameters(), lr=1)
    assert len(fabric.setup_optimizers(second, third)) == 2
    with pytest.raises(ValueError, match="at least one"):
        fabric.setup_optimizers()


def test_setting_up_an_object_twice_is_an_error() -> None:
    fabric = Fabric(accelerator="cpu")
    model, optimizer = model_and_optimizer()
    wrapped_model, wrapped_optimizer = fabric.setup(model, optimizer)
    with pytest.raises(ValueError, match="already set up"):
        fabric.setup(wrapped_model)
    with pytest.raises(ValueError, match="already set up"):
        fabric.setup(model)
    with pytest.raises(ValueError, match="already set up"):
        fabric.setup(TinyMLP(), optimizer)
    with pytest.raises(ValueError, match="already set up"):
        fabric.setup_optimizers(wrapped_optimizer)
    with pytest.raises(TypeError, match=r"torch.nn.Module"):
        fabric.setup("model")  # type: ignore[arg-type]
    loader = fabric.setup_dataloaders(DataLoader(range(4)))
    with pytest.raises(ValueError, match="already set up"):
        fabric.setup_dataloaders(loader)
    with pytest.raises(TypeError, match="DataLoader"):
        fabric.setup_dataloaders([1, 2])  # type: ignore[arg-type]


def test_setup_dataloaders_wraps_each_loader() -> None:
    fabric = Fabric(accelerator="cpu")
    first, second = fabric.setup_dataloaders(DataLoader(range(4)), DataLoader(range(2)), move_to_device=False)
    assert isinstance(first, FabricDataLoader)
    assert first.device is None
    assert [int(x) for x in second] == [0, 1]
    single = fabric.setup_dataloaders(DataLoader(range(3), shuffle=True))
    assert single.device == torch.device("cpu")
    assert type(single.dataloader.sampler).__name__ == "RandomSampler"  # one process: nothing to shard


def test_precision_runs_the_forward_and_init_contexts() -> None:
    fabric = Fabric(accelerator="cpu", precision="bf16-true")
    with fabric.init_module():
        model = TinyMLP()
    assert model.layer1.weight.dtype == torch.bfloat16
    with fabric.init_tensor():
        assert torch.ones(2).dtype == torch.bfloat16
    wrapped = fabric.setup(model)
    assert wrapped(torch.randn(2, 32)).dtype == torch.float32
    mixed = Fabric(accelerator="cpu", precision="bf16-mixed")
    with mixed.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_init_module_with_empty_init_skips_initialisation() -> None:
    fabric = Fabric(accelerator="cpu")
    torch.manual_seed(0)
    with fabric.init_module(empty_init=False):
        initialised = nn.Linear(4, 4)
    torch.manual_seed(0)
    with fabric.init_module(empty_init=True):
        empty = nn.Linear(4, 4)
    assert not torch.equal(initialised.weight, empty.weight)


def test_clip_gradients_by_norm_and_by_value() -> None:
    fabric = Fabric(accelerator="cpu")
    model, optimizer = fabric.setup(*model_and_optimizer())
    fabric.backward(model(torch.randn(8, 32)).pow(2).sum() * 100)
    norm = fabric.clip_gradients(model, optimizer, max_norm=1.0)
    assert norm is not None
    assert float(norm) > 1.0
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert float(total) == pytest.approx(1.0, rel=1e-4)
    assert fabric.clip_gradients(model, optimizer, clip_val=0.01) is None
    assert max(float(p.grad.abs().max()) for p in model.parameters()) <= 0.01 + 1e-7
    with pytest.raises(ValueError, match="exactly one"):
        fabric.clip_gradients(model, optimizer)
    with pytest.raises(ValueError, match="exactly one"):
        fabric.clip_gradients(model, optimizer, clip_val=1.0, max_norm=1.0)
    next(model.parameters()).grad.fill_(float("inf"))
    with pytest.raises(RuntimeError, match="non-finite"):
        fabric.clip_gradients(model, optimizer, max_norm=1.0)


def test_no_backward_sync_needs_a_set_up_model() -> None:
    fabric = Fabric(accelerator="cpu")
    model = fabric.setup(TinyMLP())
    with fabric.no_backward_sync(model):
        fabric.backward(model(torch.randn(2, 32)).sum())
    with fabric.no_backward_sync(model, enabled=False):
        pass
    with pytest.raises(TypeError, match=r"fabric.setup"):
        fabric.no_backward_sync(TinyMLP())  # type: ignore[arg-type]


def test_to_device_print_and_seed(capsys: pytest.CaptureFixture[str]) -> None:
    fabric = Fabric(accelerator="cpu")
    batch = {"x": torch.ones(2), "y": [torch.zeros(1)]}
    assert fabric.to_device(batch)["x"].device.type == "cpu"
    module = nn.Linear(2, 2)
    assert fabric.to_device(module) is module
    fabric.print("hello", 1)
    assert capsys.readouterr().out == "hello 1\n"
    assert fabric.seed_everything(7) == 7
    first = torch.rand(3)
    Fabric.seed_everything(7)
    assert torch.equal(first, torch.rand(3))


def test_collectives_on_one_process_validate_their_arguments() -> None:
    fabric = Fabric(accelerator="cpu")
    assert fabric.all_reduce(torch.tensor(3.0)).item() == 3.0
    assert fabric.all_reduce({"a": 2}, reduce_op="sum")["a"].item() == 2
    with pytest.raises(ValueError, match=r"'median'.*mean"):
        fabric.all_reduce(torch.tensor(1.0), reduce_op="median")
    gathered = fabric.all_gather({"x": torch.ones(3)})
    assert gathered["x"].shape == (3,)
    assert fabric.broadcast({"k": 1}) == {"k": 1}
    fabric.barrier("alone")
    with fabric.rank_zero_first():
        pass


def training_state(fabric: Fabric) -> dict[str, Any]:
    model, optimizer = fabric.setup(*model_and_optimizer())
    fabric.backward(model(torch.randn(4, 32)).sum())
    optimizer.step()
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(torch.arange(10)), batch_size=2, shuffle=True))
    iterator = iter(loader)
    next(iterator)
    return {"model": model, "optimizer": optimizer, "loader": loader, "step": 5, "note": "kept"}


def test_save_and_load_restore_in_place_and_return_the_rest(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu")
    state = training_state(fabric)
    path = tmp_path / "checkpoint.pt"
    fabric.save(path, state)
    target = training_state(Fabric(accelerator="cpu"))
    target["step"] = 0
    remainder = fabric.load(path, {"model": target["model"], "optimizer": target["optimizer"], "step": 0})
    assert set(remainder) == {"loader", "note"}
    for name, value in state["model"].state_dict().items():
        assert torch.equal(value, target["model"].state_dict()[name])
    assert target["optimizer"].state_dict()["state"].keys() == state["optimizer"].state_dict()["state"].keys()
    plain = {"step": 0}
    fabric.load(path, plain, strict=False)
    assert plain == {"step": 5}
    assert fabric.load(path)["step"] == 5


def test_load_errors_name_the_problem(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu")
    path = tmp_path / "checkpoint.pt"
    fabric.save(path, {"step": 1})
    with pytest.raises(FileNotFoundError, match=r"missing.pt"):
        fabric.load(tmp_path / "missing.pt", {})
    with pytest.raises((KeyError, ValueError), match="model"):
        fabric.load(path, {"model": TinyMLP()})
    assert fabric.load(path, {"model": TinyMLP()}, strict=False) == {"step": 1}
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"corrupt.pt"):
        fabric.load(tmp_path / "corrupt.pt")
    with pytest.raises(TypeError, match="dict"):
        fabric.save(path, [1])  # type: ignore[arg-type]


class Payload:
    """An object that weights_only loading refuses."""

    def __init__(self) -> None:
        self.value = 1


def test_loading_defaults_to_weights_only(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu")
    path = tmp_path / "payload.pt"
    torch.save({"obj": Payload()}, path)
    with pytest.raises(ValueError, match=r"payload.pt"):
        fabric.load(path)
    assert fabric.load(path, weights_only=False)["obj"].value == 1


def test_save_with_a_filter_keeps_only_what_it_accepts(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu")
    model = fabric.setup(TinyMLP())
    path = tmp_path / "filtered.pt"
    fabric.save(path, {"model": model, "step": 3}, filter={"model": lambda name, value: name.startswith("layer1")})
    saved = torch.load(path, weights_only=True)
    assert sorted(saved["model"]) == ["layer1.bias", "layer1.weight"]
    assert saved["step"] == 3
    with pytest.raises(ValueError, match="'nothing'"):
        fabric.save(path, {"model": model}, filter={"nothing": lambda n, v: True})
    with pytest.raises(TypeError, match="callable"):
        fabric.save(path, {"model": model}, filter={"model": 3})  # type: ignore[dict-item]


def test_load_raw_reads_a_plain_state_dict(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu")
    source = TinyMLP()
    torch.save(source.state_dict(), tmp_path / "raw.pt")
    model = fabric.setup(TinyMLP())
    fabric.load_raw(tmp_path / "raw.pt", model)
    assert torch.equal(model.module.layer1.weight, source.layer1.weight)
    optimizer = torch.optim.SGD(source.parameters(), lr=0.3)
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    target = torch.optim.SGD(TinyMLP().parameters(), lr=1.0)
    fabric.load_raw(tmp_path / "optimizer.pt", target)
    assert target.param_groups[0]["lr"] == 0.3
    with pytest.raises(TypeError, match="module or an optimizer"):
        fabric.load_raw(tmp_path / "raw.pt", {"a": 1})  # type: ignore[arg-type]


class RecordingLogger:
    """Any object implementing the fabric_utils.Logger protocol can be used."""

    def __init__(self) -> None:
        self.metrics: list[tuple[dict[str, Any], int | None]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.metrics.append((dict(metrics), step))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def save(self) -> None:
        pass

    def finalize(self, status: str) -> None:
        pass


def test_log_and_log_dict_reach_every_logger(tmp_path: Path) -> None:
    recording = RecordingLogger()
    csv_logger = CSVLogger(tmp_path, name="run", flush_logs_every_n_steps=1)
    fabric = Fabric(accelerator="cpu", loggers=[recording, csv_logger])
    assert fabric.logger is recording
    assert fabric.loggers == [recording, csv_logger]
    fabric.log("loss", torch.tensor(0.5), step=1)
    fabric.log_dict({"loss": 0.25, "acc": torch.tensor([0.75])}, step=2)
    assert recording.metrics == [({"loss": 0.5}, 1), ({"loss": 0.25, "acc": 0.75}, 2)]
    csv_logger.finalize("success")
    with open(next(tmp_path.rglob("metrics.csv"))) as file:
        rows = list(csv.DictReader(file))
    assert [row["loss"] for row in rows] == ["0.5", "0.25"]
    single = Fabric(accelerator="cpu", loggers=recording)
    assert single.loggers == [recording]


def test_call_reaches_callbacks_with_the_arguments_they_accept() -> None:
    seen: list[Any] = []

    class Narrow:
        def on_train_epoch_end(self, epoch: int) -> None:
            seen.append(("narrow", epoch))

    class Wide:
        def on_train_epoch_end(self, **kwargs: Any) -> None:
            seen.append(("wide", kwargs))

    fabric = Fabric(accelerator="cpu", callbacks=[Narrow(), Wide(), object()])
    fabric.call("on_train_epoch_end", epoch=2, fabric=fabric)
    assert seen == [("narrow", 2), ("wide", {"epoch": 2, "fabric": fabric})]
    fabric.call("hook_nobody_has")


class LightningStyleModule(TinyMLP):
    """A module following the LightningModule protocol: a ``_fabric`` attribute that ``log`` and friends use."""

    _fabric: Any = None

    @property
    def fabric(self) -> Any:
        return self._fabric

    @property
    def logger(self) -> Any:
        return self._fabric.logger if self._fabric is not None else None

    def log(self, name: str, value: Any, step: int | None = None) -> None:
        self._fabric.log(name, value, step=step)


@pytest.mark.parametrize("method", ["setup", "setup_module"])
def test_setup_gives_a_lightning_style_module_its_fabric(method: str) -> None:
    recording = RecordingLogger()
    fabric = Fabric(accelerator="cpu", loggers=recording)
    module = LightningStyleModule()
    wrapped = getattr(fabric, method)(module)
    assert module.fabric is fabric
    assert wrapped.fabric is fabric
    assert module.logger is recording
    wrapped.log("loss", 0.5, step=3)
    assert recording.metrics == [({"loss": 0.5}, 3)]
    plain = TinyMLP()
    fabric.setup(plain)
    assert not hasattr(plain, "_fabric")  # only modules that declare the attribute get it
