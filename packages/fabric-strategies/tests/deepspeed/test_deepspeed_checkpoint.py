"""Loading DeepSpeed checkpoints never runs code from them unless the caller opts out with ``weights_only=False``.

Real checkpoints written by ``DeepSpeedStrategy`` (one rank, a real gloo group) at ZeRO stages 1-3 pass the
weights-only check and load by default; a file carrying a pickle payload (unpickling it would create a marker file)
is refused by every load path before DeepSpeed reads it, and only ``weights_only=False`` lets DeepSpeed read it.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

from fabric_environments import LightningEnvironment
from fabric_precision import DeepSpeedPrecision
from fabric_strategies import DeepSpeedStrategy, UnsafeCheckpointError
from fabric_strategies.deepspeed.checkpoint import CHECKPOINT_TAG, check_weights_only, trusted_tag
from fabric_testing import PicklePayload, RunIf, TinyMLP

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture
def started(request: pytest.FixtureRequest) -> Iterator[DeepSpeedStrategy]:
    """A strategy whose environment is set up (a one-process group); torn down after the test."""
    options = dict(getattr(request, "param", {"stage": 2}))
    strategy = DeepSpeedStrategy(
        parallel_devices=[torch.device("cpu")],
        cluster_environment=LightningEnvironment(),
        precision=DeepSpeedPrecision(options.pop("precision", "32-true")),  # type: ignore[arg-type]
        timeout=timedelta(seconds=30),
        **options,
    )
    strategy.setup_environment()
    yield strategy
    strategy.teardown()


def _trained(strategy: DeepSpeedStrategy) -> tuple[Any, Any]:
    torch.manual_seed(0)
    model = TinyMLP(4, 8, 2)
    engine, [optimizer] = strategy.setup_module_and_optimizers(model, [torch.optim.Adam(model.parameters())])
    strategy.backward(engine(strategy.precision.convert_input(torch.randn(4, 4))).float().sum(), engine)
    strategy.optimizer_step(optimizer)
    return engine, optimizer


def _weights(engine: Any) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in engine.module.state_dict().items()}


def _scramble(engine: Any) -> None:
    with torch.no_grad():
        for parameter in engine.module.parameters():
            parameter.fill_(7.0)


@RunIf(deepspeed=True)
@pytest.mark.parametrize(
    "started",
    [{"stage": 1}, {"stage": 2}, {"stage": 3}, {"stage": 2, "precision": "bf16-mixed"}],
    indirect=True,
    ids=["zero1", "zero2", "zero3", "zero2-bf16"],
)
def test_our_checkpoints_pass_the_check_and_load_by_default(started: DeepSpeedStrategy, tmp_path: Path) -> None:
    engine, optimizer = _trained(started)
    expected = _weights(engine)
    started.save_checkpoint(tmp_path / "ckpt", {"model": engine, "optimizer": optimizer, "step": 3, "cfg": {"lr": 1}})
    tag_directory = tmp_path / "ckpt" / CHECKPOINT_TAG
    assert len(list(tag_directory.glob("*.pt"))) >= 2, "model and optimizer states were both checked"
    check_weights_only(str(tag_directory))  # loss scaler, ZeRO stage, fragment addresses: all allowed

    _scramble(engine)
    state: dict[str, Any] = {"model": engine, "optimizer": optimizer, "step": 0}
    assert started.load_checkpoint(tmp_path / "ckpt", state) == {"cfg": {"lr": 1}}
    assert state["step"] == 3
    actual = _weights(engine)
    assert all(torch.equal(value, actual[name]) for name, value in expected.items())


@RunIf(deepspeed=True)
def test_a_payload_in_the_client_state_is_refused_by_every_load_path(
    started: DeepSpeedStrategy, tmp_path: Path
) -> None:
    engine, optimizer = _trained(started)
    marker = tmp_path / "ran"
    started.save_checkpoint(
        tmp_path / "ckpt", {"model": engine, "optimizer": optimizer, "extra": PicklePayload(marker)}
    )
    assert not marker.exists(), "saving must not run the payload"
    model_states = str(tmp_path / "ckpt" / CHECKPOINT_TAG / "mp_rank_00_model_states.pt")
    loads = {
        "engine and optimizer": lambda **kw: started.load_checkpoint(
            tmp_path / "ckpt", {"model": engine, "optimizer": optimizer}, **kw
        ),
        "the model alone": lambda **kw: started.load_checkpoint(tmp_path / "ckpt", engine.module, **kw),
    }
    for name, load in loads.items():
        for weights_only in ({}, {"weights_only": True}):
            with pytest.raises(UnsafeCheckpointError) as info:
                load(**weights_only)
            assert not marker.exists(), f"the payload ran while loading {name} with {weights_only}"
            message = str(info.value)
            assert repr(model_states) in message, message
            assert "weights_only=False" in message, message
            assert "open" in message, f"the refused global is not named: {message}"
        load(weights_only=False)  # the explicit opt-out hands the file to DeepSpeed, which unpickles it
        assert marker.exists(), f"{name}: weights_only=False did not read the checkpoint"
        marker.unlink()


@RunIf(deepspeed=True)
def test_a_payload_in_a_zero_optimizer_shard_is_refused(started: DeepSpeedStrategy, tmp_path: Path) -> None:
    engine, optimizer = _trained(started)
    started.save_checkpoint(tmp_path / "ckpt", {"model": engine, "optimizer": optimizer})
    [shard] = (tmp_path / "ckpt" / CHECKPOINT_TAG).glob("*optim_states.pt")
    marker = tmp_path / "ran"
    states = torch.load(shard, weights_only=False)
    torch.save({**states, "hidden": PicklePayload(marker)}, shard)
    with pytest.raises(UnsafeCheckpointError, match=re.escape(repr(str(shard))) + ".*weights_only=False"):
        started.load_checkpoint(tmp_path / "ckpt", {"model": engine, "optimizer": optimizer})
    assert not marker.exists()


# -- the check itself, on files written here ---------------------------------------------------------------------------
def test_check_reads_every_torch_file_under_the_tag_and_only_those(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "zero" / "layer").mkdir(parents=True)  # universal checkpoints nest per-parameter folders
    torch.save({"w": torch.ones(2), "names": ["a", "b"], "shapes": {"a": torch.Size([2])}}, tmp_path / "a.pt")
    torch.save(torch.zeros(3), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)  # cannot be mapped
    (tmp_path / "zero_to_fp32.py").write_text("print('not a checkpoint file')")
    (tmp_path / "notes.txt").write_bytes(b"\x80\x04garbage")
    check_weights_only(str(tmp_path))

    nested = tmp_path / "zero" / "layer" / "fp32.pt"
    torch.save({"param": PicklePayload(marker)}, nested)
    with pytest.raises(UnsafeCheckpointError, match=re.escape(repr(str(nested)))):
        check_weights_only(str(tmp_path))
    assert not marker.exists()

    nested.write_bytes(b"PK\x03\x04 truncated")
    unreadable = "Could not read the DeepSpeed checkpoint file " + re.escape(repr(str(nested)))
    with pytest.raises(ValueError, match=unreadable):
        check_weights_only(str(tmp_path))


@RunIf(deepspeed=True)
def test_deepspeed_records_are_allowed_during_the_check(tmp_path: Path) -> None:
    loss_scaler = importlib.import_module("deepspeed.runtime.fp16.loss_scaler")
    zero_config = importlib.import_module("deepspeed.runtime.zero.config")
    fragments = importlib.import_module("deepspeed.utils.tensor_fragment")
    records = {
        "loss_scaler": loss_scaler.LossScaler(1.0),
        "dynamic": loss_scaler.DynamicLossScaler(
            init_scale=8.0, scale_window=10, min_scale=1.0, delayed_shift=2, consecutive_hysteresis=False
        ),
        "zero_stage": zero_config.ZeroStageEnum(2),
        "fragment": fragments.fragment_address(numel=4, start=2),
    }
    torch.save(records, tmp_path / "optim_states.pt")
    check_weights_only(str(tmp_path))
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(tmp_path / "optim_states.pt", weights_only=True)  # the allowlist applies during the check only


def test_the_tag_comes_from_the_latest_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"needs the 'latest' file"):
        trusted_tag(None, str(tmp_path), None)
    (tmp_path / "latest").write_text("\n")
    with pytest.raises(FileNotFoundError, match=r"needs the 'latest' file"):
        trusted_tag(None, str(tmp_path), None)
    (tmp_path / "latest").write_text("step-9\n")
    (tmp_path / "step-9").mkdir()
    marker = tmp_path / "ran"
    torch.save({"x": PicklePayload(marker)}, tmp_path / "step-9" / "mp_rank_00_model_states.pt")
    with pytest.raises(UnsafeCheckpointError):
        trusted_tag(None, str(tmp_path), None)
    with pytest.raises(UnsafeCheckpointError):
        trusted_tag(None, str(tmp_path), True)
    assert trusted_tag(None, str(tmp_path), False) == "step-9"  # trusted: nothing is read here
    assert not marker.exists()


@pytest.mark.parametrize("weights_only", [None, False])
def test_the_tag_and_its_files_stay_inside_the_checkpoint(tmp_path: Path, weights_only: bool | None) -> None:
    other = tmp_path / "other" / "checkpoint"
    other.mkdir(parents=True)
    torch.save({"w": torch.ones(2)}, other / "mp_rank_00_model_states.pt")
    directory = tmp_path / "ckpt"
    (directory / "checkpoint").mkdir(parents=True)
    for tag in ("../other/checkpoint", str(other)):
        (directory / "latest").write_text(tag)
        with pytest.raises(UnsafeCheckpointError, match=re.escape(repr(tag)) + ".*outside the checkpoint directory"):
            trusted_tag(None, str(directory), weights_only)
    (directory / "latest").write_text("checkpoint")
    os.symlink(other / "mp_rank_00_model_states.pt", directory / "checkpoint" / "mp_rank_00_model_states.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"'mp_rank_00_model_states\.pt'.*outside"):
        trusted_tag(None, str(directory), weights_only)
    os.remove(directory / "checkpoint" / "mp_rank_00_model_states.pt")
    os.symlink(other, directory / "checkpoint" / "zero")
    with pytest.raises(UnsafeCheckpointError, match=r"'zero'.*outside"):
        trusted_tag(None, str(directory), weights_only)
