"""DeepSpeedStrategy in this process (one rank, a real gloo group): set-up, routing of backward and step between
several engines, the rendezvous variables, refusals with clear errors, and checkpoint round trips."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

from fabric_environments import LightningEnvironment
from fabric_precision import DeepSpeedPrecision, MixedPrecision
from fabric_strategies import STRATEGY_REGISTRY, DeepSpeedConfig, DeepSpeedStrategy, MissingStateKeyError
from fabric_testing import RunIf, TinyMLP
from fabric_utils import MissingDependencyError, module_available

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _strategy(precision: str = "32-true", **options: Any) -> DeepSpeedStrategy:
    return DeepSpeedStrategy(
        parallel_devices=[torch.device("cpu")],
        cluster_environment=LightningEnvironment(),
        precision=DeepSpeedPrecision(precision),  # type: ignore[arg-type]
        timeout=timedelta(seconds=30),
        **options,
    )


@pytest.fixture
def started(request: pytest.FixtureRequest) -> Iterator[DeepSpeedStrategy]:
    """A strategy whose environment is set up (a one-process group); torn down after the test."""
    options = getattr(request, "param", {"stage": 2})
    strategy = _strategy(**options)
    strategy.setup_environment()
    yield strategy
    strategy.teardown()


def _model_and_optimizer(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = TinyMLP(4, 8, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.5)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


# -- construction ----------------------------------------------------------------------------------------------------
@RunIf(deepspeed=True)
def test_options_reach_the_config_as_dataclass_keywords_or_raw_dict(tmp_path: Path) -> None:
    by_keywords = DeepSpeedStrategy(stage=3, offload_optimizer=True, reduce_bucket_size=1000)
    by_dataclass = DeepSpeedStrategy(DeepSpeedConfig(stage=3, offload_optimizer=True, reduce_bucket_size=1000))
    assert by_keywords.config == by_dataclass.config
    assert by_keywords.zero_stage == 3
    assert by_keywords.options == DeepSpeedConfig(stage=3, offload_optimizer=True, reduce_bucket_size=1000)
    zero = by_keywords.config["zero_optimization"]
    assert zero["reduce_bucket_size"] == 1000
    assert zero["offload_optimizer"]["device"] == "cpu"

    raw = {"zero_optimization": {"stage": 1}, "gradient_clipping": 0.5}
    by_dict = DeepSpeedStrategy(raw)
    assert by_dict.zero_stage == 1
    assert by_dict.options is None
    assert by_dict.config == {**raw, "train_micro_batch_size_per_gpu": 1}, (
        "only the batch size DeepSpeed needs is added"
    )
    raw["gradient_clipping"] = 9.0
    assert by_dict.config["gradient_clipping"] == 0.5, "the strategy keeps its own copy"

    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"stage": 3}, "train_batch_size": 4}')
    assert DeepSpeedStrategy(config=path).config == {"zero_optimization": {"stage": 3}, "train_batch_size": 4}
    assert DeepSpeedStrategy(config=str(path)).zero_stage == 3


@RunIf(deepspeed=True)
def test_bad_configuration_is_named() -> None:
    with pytest.raises(TypeError, match=r"\['stag'\].*stage, offload_optimizer"):
        DeepSpeedStrategy(stag=3)
    with pytest.raises(ValueError, match="either as `config` or as keyword arguments"):
        DeepSpeedStrategy({"zero_optimization": {"stage": 1}}, stage=2)
    with pytest.raises(ValueError, match=r"'missing.json' does not exist"):
        DeepSpeedStrategy(config="missing.json")
    with pytest.raises(TypeError, match="DeepSpeedConfig, a dict or the path"):
        DeepSpeedStrategy(config=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Unknown ZeRO stage in the DeepSpeed config 4. Choose one of: 0, 1, 2, 3"):
        DeepSpeedStrategy({"zero_optimization": {"stage": 4}})
    with pytest.raises(ValueError, match="Unknown start_method 'thread'"):
        DeepSpeedStrategy(start_method="thread")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="timedelta"):
        DeepSpeedStrategy(timeout=30)  # type: ignore[arg-type]


@RunIf(deepspeed=True)
def test_json_config_must_be_a_json_object(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"broken.json' is not valid JSON"):
        DeepSpeedStrategy(config=tmp_path / "broken.json")
    with pytest.raises(ValueError, match="must hold a JSON object, got list"):
        DeepSpeedStrategy(config=tmp_path / "list.json")


@RunIf(deepspeed=True)
def test_precision_must_be_deepspeeds_and_fp16_is_refused_on_cpu() -> None:
    with pytest.raises(TypeError, match=r"needs a DeepSpeedPrecision.*MixedPrecision"):
        DeepSpeedStrategy(precision=MixedPrecision("bf16-mixed", device_type="cpu"))
    strategy = DeepSpeedStrategy(parallel_devices=[torch.device("cpu")])
    with pytest.raises(TypeError, match="needs a DeepSpeedPrecision"):
        strategy.complete(precision=MixedPrecision("bf16-mixed", device_type="cpu"))
    assert isinstance(strategy.default_precision("bf16-mixed"), DeepSpeedPrecision)
    with pytest.raises(ValueError, match=r"^16-mixed is not supported by DeepSpeed on CPU; use bf16-mixed or 32-true$"):
        strategy.default_precision("16-mixed")
    with pytest.raises(ValueError, match="16-true is not supported by DeepSpeed on CPU; use bf16-true"):
        strategy.default_precision("16-true")
    with pytest.raises(ValueError, match=r"does not support precision '64-true'. Choose one of: 32-true"):
        strategy.default_precision("64-true")
    strategy.complete(precision=DeepSpeedPrecision("bf16-mixed"))
    assert strategy.config["bf16"] == {"enabled": True}


@RunIf(deepspeed=True)
def test_fp16_given_directly_is_refused_when_the_environment_is_set_up() -> None:
    with pytest.raises(ValueError, match="16-mixed is not supported by DeepSpeed on CPU"):
        _strategy("16-mixed").setup_environment()
    with pytest.raises(ValueError, match="config's fp16 is not supported by DeepSpeed on CPU"):
        DeepSpeedStrategy({"fp16": {"enabled": True}}, parallel_devices=[torch.device("cpu")]).setup_environment()
    assert "LOCAL_RANK" not in os.environ


@RunIf(deepspeed=True)
def test_a_config_precision_section_must_match_the_precision_plugin() -> None:
    with pytest.raises(ValueError, match=r"enables \['bf16'\], but the precision is '32-true'"):
        DeepSpeedStrategy({"bf16": {"enabled": True}}).config  # noqa: B018
    matching = DeepSpeedStrategy({"bf16": {"enabled": True}}, precision=DeepSpeedPrecision("bf16-mixed"))
    assert matching.config["bf16"] == {"enabled": True}


@RunIf(deepspeed=True)
def test_registry_names_build_their_configuration() -> None:
    expected = {
        "deepspeed": (2, False, False),
        "deepspeed_stage_1": (1, False, False),
        "deepspeed_stage_1_offload": (1, True, False),
        "deepspeed_stage_2": (2, False, False),
        "deepspeed_stage_2_offload": (2, True, False),
        "deepspeed_stage_3": (3, False, False),
        "deepspeed_stage_3_offload": (3, True, True),
        "deepspeed_stage_3_offload_nvme": (3, True, True),
    }
    descriptions = STRATEGY_REGISTRY.descriptions()
    for name, (stage, optimizer, parameters) in expected.items():
        strategy = STRATEGY_REGISTRY.create(name)
        assert isinstance(strategy, DeepSpeedStrategy)
        zero = strategy.config["zero_optimization"]
        assert (zero["stage"], "offload_optimizer" in zero, "offload_param" in zero) == (stage, optimizer, parameters)
        assert descriptions[name]
        assert "\n" not in descriptions[name]
    nvme = STRATEGY_REGISTRY.create("deepspeed_stage_3_offload_nvme").config
    assert nvme["zero_optimization"]["offload_param"]["device"] == "nvme"
    assert "aio" in nvme


@RunIf(deepspeed=True)
def test_launchers_follow_the_start_method_and_the_strategy_pickles() -> None:
    import pickle

    from fabric_strategies import MultiprocessingLauncher, SubprocessScriptLauncher

    devices = [torch.device("cpu")] * 2
    assert isinstance(DeepSpeedStrategy(parallel_devices=devices).launcher, SubprocessScriptLauncher)
    spawn = DeepSpeedStrategy(parallel_devices=devices, start_method="spawn", stage=3)
    assert isinstance(spawn.launcher, MultiprocessingLauncher)
    copy = pickle.loads(pickle.dumps(spawn))
    assert copy.config == spawn.config
    assert copy.engines == []
    assert repr(copy) == "DeepSpeedStrategy(stage=3, precision='32-true', start_method='spawn', backend=None)"


def test_missing_deepspeed_gives_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "deepspeed" or m.startswith("deepspeed.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    module_available.cache_clear()
    try:
        with pytest.raises(
            MissingDependencyError, match=r"DeepSpeedStrategy requires `deepspeed`.*fabric-strategies\[deepspeed\]"
        ):
            DeepSpeedStrategy()
        with pytest.raises(MissingDependencyError, match="pip install"):
            STRATEGY_REGISTRY.create("deepspeed_stage_3")
    finally:
        module_available.cache_clear()


# -- one process, real engines ---------------------------------------------------------------------------------------
@RunIf(deepspeed=True)
def test_rendezvous_variables_are_set_for_deepspeed_and_removed_at_teardown(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # given by the user: left alone
    strategy = _strategy(stage=2)
    strategy.setup_environment()
    assert torch.distributed.is_initialized()
    assert (os.environ["LOCAL_RANK"], os.environ["RANK"], os.environ["WORLD_SIZE"]) == ("0", "0", "1")
    assert os.environ["MASTER_PORT"] == str(strategy.cluster_environment.main_port)
    strategy.teardown()
    assert not torch.distributed.is_initialized()
    assert [name for name in ("MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK") if name in os.environ] == []
    assert os.environ["MASTER_ADDR"] == "127.0.0.1"


@RunIf(deepspeed=True)
def test_backward_and_step_route_to_the_engine_of_each_model(started: DeepSpeedStrategy) -> None:
    model_a, optimizer_a = _model_and_optimizer(0)
    model_b, optimizer_b = _model_and_optimizer(1)
    engine_a, [zero_a] = started.setup_module_and_optimizers(model_a, [optimizer_a])
    engine_b, [zero_b] = started.setup_module_and_optimizers(model_b, [optimizer_b])
    assert started.engines == [engine_a, engine_b]
    before_a, before_b = _snapshot(engine_a.module), _snapshot(engine_b.module)
    x = torch.randn(4, 4)

    with pytest.raises(ValueError, match=r"set up 2 models.*backward\(loss, model=model\)"):
        started.backward(engine_a(x).sum(), None)
    with pytest.raises(ValueError, match="was not set up by this DeepSpeedStrategy"):
        started.backward(engine_a(x).sum(), TinyMLP(4, 8, 2))

    started.backward(engine_b(x).pow(2).sum(), model_b)  # the original module finds its engine too
    started.optimizer_step(zero_b)
    assert all(torch.equal(value, engine_a.module.state_dict()[name]) for name, value in before_a.items())
    assert not any(torch.equal(value, engine_b.module.state_dict()[name]) for name, value in before_b.items())

    started.backward(engine_a(x).pow(2).sum(), engine_a)
    started.optimizer_step(zero_a)
    assert not any(torch.equal(value, engine_a.module.state_dict()[name]) for name, value in before_a.items())
    with pytest.raises(ValueError, match="optimizer SGD was not set up"):
        started.optimizer_step(torch.optim.SGD(TinyMLP().parameters(), lr=0.1))
    with pytest.raises(ValueError, match="takes no closure"):
        started.optimizer_step(zero_a, closure=lambda: None)


@RunIf(deepspeed=True)
def test_one_optimizer_per_model_and_no_clipping_outside_the_engine(started: DeepSpeedStrategy) -> None:
    model, optimizer = _model_and_optimizer(0)
    with pytest.raises(ValueError, match="exactly one optimizer, got 2"):
        started.setup_module_and_optimizers(model, [optimizer, torch.optim.SGD(model.parameters(), lr=1.0)])
    with pytest.raises(RuntimeError, match="no model set up yet"):
        started.backward(torch.tensor(1.0, requires_grad=True), None)
    with pytest.raises(NotImplementedError, match=r"fabric.setup\(model, optimizer\)"):
        started.setup_optimizer(optimizer)
    engine, [zero] = started.setup_module_and_optimizers(model, [optimizer])
    with pytest.raises(NotImplementedError, match=r"DeepSpeedConfig\(gradient_clipping=max_norm\)"):
        started.clip_gradients_norm(engine, zero, max_norm=1.0)
    with pytest.raises(NotImplementedError, match=r"by norm inside engine.step"):
        started.clip_gradients_value(engine, zero, clip_val=1.0)
    with pytest.raises(NotImplementedError, match="stage 2 partitions gradients"):
        started.no_backward_sync(engine, enabled=True)
    with started.no_backward_sync(engine, enabled=False):
        pass


@RunIf(deepspeed=True)
@pytest.mark.parametrize("started", [{"stage": 1}], indirect=True)
def test_stage_1_skips_gradient_reduction_with_no_backward_sync(started: DeepSpeedStrategy) -> None:
    model, optimizer = _model_and_optimizer(0)
    engine, _ = started.setup_module_and_optimizers(model, [optimizer])
    with started.no_backward_sync(engine, enabled=True):
        started.backward(engine(torch.randn(2, 4)).sum(), engine)
    assert all(p.grad is not None for p in engine.module.parameters())


@RunIf(deepspeed=True)
def test_checkpoint_round_trip_restores_engine_and_client_state(started: DeepSpeedStrategy, tmp_path: Path) -> None:
    model, optimizer = _model_and_optimizer(0)
    engine, [zero] = started.setup_module_and_optimizers(model, [optimizer])
    started.backward(engine(torch.randn(4, 4)).sum(), engine)
    started.optimizer_step(zero)
    weights = _snapshot(engine.module)
    plain = TinyMLP(2, 2, 2)
    started.save_checkpoint(
        tmp_path / "ckpt",
        {"model": engine, "optimizer": zero, "epoch": 4, "plain": plain, "meta": {"a": 1, "b": 2}},
        filter={"meta": lambda name, value: name == "a"},
    )
    with torch.no_grad():
        for parameter in engine.module.parameters():
            parameter.zero_()
    fresh_plain = TinyMLP(2, 2, 2)
    state: dict[str, Any] = {"model": model, "optimizer": zero, "epoch": 0, "plain": fresh_plain}
    remainder = started.load_checkpoint(tmp_path / "ckpt", state)
    assert remainder == {"meta": {"a": 1}}
    assert state["epoch"] == 4
    assert all(torch.equal(value, engine.module.state_dict()[name]) for name, value in weights.items())
    assert all(torch.equal(value, fresh_plain.state_dict()[name]) for name, value in plain.state_dict().items())

    with pytest.raises(MissingStateKeyError, match=r"\['missing'\]"):
        started.load_checkpoint(tmp_path / "ckpt", {"model": engine, "missing": 1})
    lenient = started.load_checkpoint(tmp_path / "ckpt", {"model": engine, "missing": 1}, strict=False)
    assert set(lenient) == {"epoch", "plain", "meta"}
    # a model alone loads its weights from the DeepSpeed directory
    with torch.no_grad():
        next(engine.module.parameters()).zero_()
    assert started.load_checkpoint(tmp_path / "ckpt", model) == {}
    assert all(torch.equal(value, engine.module.state_dict()[name]) for name, value in weights.items())


@RunIf(deepspeed=True)
def test_checkpoint_mistakes_are_named(started: DeepSpeedStrategy, tmp_path: Path) -> None:
    model_a, optimizer_a = _model_and_optimizer(0)
    model_b, optimizer_b = _model_and_optimizer(1)
    engine_a, [zero_a] = started.setup_module_and_optimizers(model_a, [optimizer_a])
    engine_b, _ = started.setup_module_and_optimizers(model_b, [optimizer_b])
    with pytest.raises(ValueError, match=r"several: \['a', 'b'\]"):
        started.save_checkpoint(tmp_path / "c", {"a": engine_a, "b": engine_b})
    with pytest.raises(ValueError, match=r"`filter` cannot apply to \['optimizer'\]"):
        started.save_checkpoint(tmp_path / "c", {"model": engine_a, "optimizer": zero_a}, filter={"optimizer": bool})
    with pytest.raises(TypeError, match="no storage_options"):
        started.save_checkpoint(tmp_path / "c", {"model": engine_a}, storage_options={"anon": True})
    with pytest.raises(ValueError, match="local filesystem only, got 's3://bucket/ckpt'"):
        started.save_checkpoint("s3://bucket/ckpt", {"model": engine_a})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        started.load_checkpoint(tmp_path / "nothing", {"model": engine_a})
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="needs the 'latest' file"):
        started.load_checkpoint(tmp_path / "empty", {"model": engine_a})
    torch.save({"model": model_a.state_dict()}, tmp_path / "full.pt")
    with pytest.raises(ValueError, match=r"not a DeepSpeed checkpoint directory.*load_full_weights=True"):
        started.load_checkpoint(tmp_path / "full.pt", {"model": engine_a})
    with pytest.raises(ValueError, match="needs the model it restores into"):
        started.load_checkpoint(tmp_path / "empty", None)


@RunIf(deepspeed=True)
@pytest.mark.parametrize("started", [{"stage": 2}, {"stage": 3}], indirect=True, ids=["zero2", "zero3"])
def test_a_state_without_the_engine_is_saved_to_one_loadable_file(started: DeepSpeedStrategy, tmp_path: Path) -> None:
    if started.zero_stage == 3:
        with started.module_init_context():  # parameters partitioned as they are made: state_dict() holds placeholders
            model = TinyMLP(4, 8, 2)
    else:
        model = TinyMLP(4, 8, 2)
    engine, _ = started.setup_module_and_optimizers(model, [torch.optim.SGD(model.parameters(), lr=0.5)])
    full = started.get_module_state_dict(engine)
    assert all(value.numel() > 0 for value in full.values())
    started.save_checkpoint(tmp_path / "weights.pt", {"model": model.state_dict(), "epoch": 3})
    assert os.path.isfile(tmp_path / "weights.pt")  # one file, not a DeepSpeed directory
    saved = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert saved["epoch"] == 3
    assert saved["model"].keys() == full.keys()
    assert all(torch.equal(saved["model"][name], value) for name, value in full.items())  # gathered in full
    restored = started.load_checkpoint(tmp_path / "weights.pt", {"epoch": 0})
    assert restored["model"].keys() == full.keys()
    plain = TinyMLP(4, 8, 2)
    plain.load_state_dict(restored["model"])  # loads into a model without DeepSpeed


@RunIf(deepspeed=True)
def test_full_weights_from_a_single_file_with_load_full_weights(tmp_path: Path) -> None:
    strategy = _strategy(stage=2, load_full_weights=True)
    strategy.setup_environment()
    try:
        model, optimizer = _model_and_optimizer(0)
        engine, _ = strategy.setup_module_and_optimizers(model, [optimizer])
        source = TinyMLP(4, 8, 2)
        torch.save({"model": source.state_dict(), "step": 7}, tmp_path / "full.pt")
        assert strategy.load_checkpoint(tmp_path / "full.pt", {"model": model}) == {"step": 7}
        assert all(torch.equal(value, engine.module.state_dict()[name]) for name, value in source.state_dict().items())
    finally:
        strategy.teardown()


@RunIf(deepspeed=True)
def test_zero3_module_init_needs_the_environment_first() -> None:
    strategy = _strategy(stage=3)
    with pytest.raises(RuntimeError, match="before setup_environment"):
        strategy.module_init_context()
    assert _strategy(stage=2).module_init_context() is not None  # other stages need no process group
