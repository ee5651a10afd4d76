"""DeepSpeed ZeRO-3 at world size 4 -> ``fabric consolidate`` -> one file that a single device loads.

``scripts/deepspeed_zero3.py`` trains 3 SGD (momentum) steps under ``fabric run --devices 4`` with ZeRO stage 3
(every parameter partitioned over the 4 processes, even this tiny model's: the persistence threshold is 0) and
saves with ``fabric.save``: DeepSpeed's directory of per-rank partitions. ``fabric consolidate`` turns it into one
``torch.save`` file (read back with ``weights_only=True``) holding the full fp32 weights under the model's key and
the plain entries saved with it; ``Fabric`` on one CPU device loads it into a plain model, whose weights then equal
those of one process training on the same global batches.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from nodes import load_script
from torch.utils.data import DataLoader

from fabric_core import Fabric
from fabric_testing import RunIf

SCRIPT = Path(__file__).parent / "scripts" / "deepspeed_zero3.py"
STEPS = 3


def reference() -> dict[str, torch.Tensor]:
    script = load_script(SCRIPT)
    model = script.make_model()
    optimizer = script.make_optimizer(model)
    for x, y in list(DataLoader(script.dataset(), batch_size=script.GLOBAL_BATCH))[:STEPS]:
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return model.state_dict()


@RunIf(deepspeed=True)
@pytest.mark.scale
@pytest.mark.timeout(420)
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_zero3_at_world_four_consolidates_into_one_file_a_single_device_loads(helpers: Any, workdir: Path) -> None:
    checkpoint, consolidated = workdir / "zero3", workdir / "zero3.pt"
    command = [sys.executable, "-m", "fabric_core.cli", "run", "--devices", "4", "--", str(SCRIPT)]
    command += ["--steps", str(STEPS), "--ckpt", str(checkpoint), "--pid-dir", str(workdir / "pids")]
    result = helpers.run_command(command, workdir, timeout=360, pid_dir=workdir / "pids", settle=10)
    assert result.returncode == 0, result.describe()
    assert not result.leftovers, result.describe()
    assert "partitioned: True" in result.output, result.describe()
    partitions = sorted(path.name for path in (checkpoint / "checkpoint").glob("zero_pp_rank_*_model_states.pt"))
    assert len(partitions) == 4, partitions

    consolidate = [sys.executable, "-m", "fabric_core.cli", "consolidate", str(checkpoint)]
    done = subprocess.run(
        [*consolidate, "--output-file", str(consolidated)],
        capture_output=True,
        text=True,
        timeout=180,
        env=helpers.command_environment(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Consolidated {checkpoint} into {consolidated}" in done.stdout, done.stdout
    contents = torch.load(consolidated, weights_only=True)
    assert sorted(contents) == ["model", "step"]  # DeepSpeed's partitioned optimizer state is not consolidated
    assert contents["step"] == STEPS

    fabric = Fabric(accelerator="cpu", devices=1)
    model = load_script(SCRIPT).make_model()
    remainder = fabric.load(consolidated, {"model": model})
    assert remainder == {"step": STEPS}
    expected = reference()
    assert model.state_dict().keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(model.state_dict()[name], value, atol=1e-6, rtol=0, msg=name)
