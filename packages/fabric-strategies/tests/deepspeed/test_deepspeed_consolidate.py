"""``consolidate_sharded_checkpoint`` on DeepSpeed checkpoints: full fp32 weights and the plain entries, one file.

Checkpoints are written for real by ``DeepSpeedStrategy`` (one process, a real gloo group) at ZeRO stages 1-3. World
size 4 -> ``fabric consolidate`` -> a single-device load is in tests-integration/test_deepspeed_consolidate.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

from fabric_environments import LightningEnvironment
from fabric_precision import DeepSpeedPrecision
from fabric_strategies import DeepSpeedStrategy, UnsafeCheckpointError, consolidate_sharded_checkpoint
from fabric_strategies.deepspeed.checkpoint import CHECKPOINT_TAG
from fabric_strategies.deepspeed.consolidate import is_deepspeed_checkpoint, read_deepspeed_checkpoint
from fabric_testing import PicklePayload, RunIf, TinyMLP

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
CONFIGURATIONS = {
    "zero1": {"stage": 1},
    "zero2": {"stage": 2},
    "zero3": {"stage": 3},
    "zero3-bf16": {"stage": 3, "precision": "bf16-mixed"},
}


@pytest.fixture
def started(request: pytest.FixtureRequest) -> Iterator[DeepSpeedStrategy]:
    strategy = DeepSpeedStrategy(
        parallel_devices=[torch.device("cpu")],
        cluster_environment=LightningEnvironment(),
        precision=DeepSpeedPrecision(request.param.get("precision", "32-true")),
        timeout=timedelta(seconds=30),
        stage=request.param["stage"],
    )
    strategy.setup_environment()
    yield strategy
    strategy.teardown()


def _save(strategy: DeepSpeedStrategy, path: Path, **extra: Any) -> dict[str, torch.Tensor]:
    """Train one step, save under the key "net" with plain entries; return the module's full weights."""
    torch.manual_seed(0)
    model = TinyMLP(4, 8, 2)
    engine, [optimizer] = strategy.setup_module_and_optimizers(model, [torch.optim.Adam(model.parameters())])
    strategy.backward(engine(strategy.precision.convert_input(torch.randn(4, 4))).float().sum(), engine)
    strategy.optimizer_step(optimizer)
    strategy.save_checkpoint(path, {"net": engine, "optimizer": optimizer, "step": 1, "cfg": {"lr": 1}, **extra})
    return dict(strategy.get_module_state_dict(engine))


@RunIf(deepspeed=True)
@pytest.mark.parametrize("started", list(CONFIGURATIONS.values()), ids=list(CONFIGURATIONS), indirect=True)
def test_deepspeed_checkpoints_consolidate_into_weights_and_plain_entries(
    started: DeepSpeedStrategy, tmp_path: Path
) -> None:
    expected = _save(started, tmp_path / "ckpt")
    assert is_deepspeed_checkpoint(tmp_path / "ckpt")
    written = consolidate_sharded_checkpoint(tmp_path / "ckpt")
    assert written == f"{tmp_path / 'ckpt'}.consolidated"
    contents = torch.load(written, weights_only=True)
    assert sorted(contents) == ["cfg", "net", "step"]  # no optimizer state, no DeepSpeed bookkeeping
    assert contents["step"] == 1
    assert contents["cfg"] == {"lr": 1}
    assert contents["net"].keys() == expected.keys()
    for name, value in expected.items():
        assert contents["net"][name].dtype == torch.float32
        # bf16-mixed trains fp32 master weights: the consolidated ones round to the module's bf16 copy
        atol = 0 if value.dtype == torch.float32 else 1e-2
        torch.testing.assert_close(contents["net"][name], value.float(), atol=atol, rtol=0)


@RunIf(deepspeed=True)
@pytest.mark.parametrize("started", [{"stage": 3}], indirect=True, ids=["zero3"])
def test_a_payload_is_refused_before_deepspeed_reads_the_files(started: DeepSpeedStrategy, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    _save(started, tmp_path / "ckpt", extra=PicklePayload(marker))
    with pytest.raises(UnsafeCheckpointError, match=r"model_states\.pt.*weights_only=False"):
        consolidate_sharded_checkpoint(tmp_path / "ckpt")
    assert not marker.exists()
    assert not (tmp_path / "ckpt.consolidated").exists()
    read_deepspeed_checkpoint(tmp_path / "ckpt", weights_only=False)  # the explicit opt-out reads it
    assert marker.exists()


def test_a_directory_without_the_latest_file_is_not_taken_for_a_deepspeed_checkpoint(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT_TAG).mkdir()
    assert not is_deepspeed_checkpoint(tmp_path)
    (tmp_path / "latest").write_text(CHECKPOINT_TAG)
    assert is_deepspeed_checkpoint(tmp_path)
    (tmp_path / ".metadata").write_bytes(b"")  # a torch.distributed.checkpoint directory wins
    assert not is_deepspeed_checkpoint(tmp_path)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
        consolidate_sharded_checkpoint(tmp_path)
