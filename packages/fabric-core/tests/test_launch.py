"""``launch()`` and ``fabric run`` for real: scripts run in fresh processes that start 2 ranks on the CPU.

The same training script (the README's five-step conversion) runs both ways: started with ``python`` it calls
``launch()``, which starts the second process; started with ``fabric run`` the processes already exist and
``launch()`` only joins them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fabric_testing import find_free_port

TRAIN_SCRIPT = textwrap.dedent(
    """
    import sys
    from datetime import timedelta

    import torch
    from torch.utils.data import DataLoader

    from fabric_core import Fabric
    from fabric_testing import RandomLabelledDataset, TinyMLP

    explicit = "--explicit" in sys.argv
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp", precision="bf16-mixed") if explicit else Fabric()
    if "--no-launch" not in sys.argv:
        fabric.launch()                                                          # 2. start processes
    fabric.seed_everything(7)
    model = TinyMLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)                           # 3. wrap model/optimizer
    dataloader = DataLoader(RandomLabelledDataset(length=64), batch_size=8, shuffle=True)
    dataloader = fabric.setup_dataloaders(dataloader)                           # 4. shard the data
    for x, y in dataloader:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        fabric.backward(loss)                                                   # 5. instead of loss.backward()
        optimizer.step()
    checksum = sum(float(p.detach().sum()) for p in model.parameters())
    gathered = fabric.all_gather(torch.tensor(checksum))
    print(
        f"rank={fabric.global_rank} world={fabric.world_size} strategy={type(fabric.strategy).__name__}"
        f" precision={fabric.strategy.precision.precision} batches={len(dataloader)} checksum={checksum:.6f}"
        f" same={bool((gathered == gathered[0]).all())}",
        flush=True,
    )
    """
)


def run(command: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FABRIC_", "PYTEST_"))}
    env["MASTER_PORT"] = str(find_free_port())
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


REPORT = re.compile(r"rank=\d+ world=\S+ strategy=\S+ precision=\S+ batches=\S+ checksum=\S+ same=(?:True|False)")


def ranks_reported(output: str) -> dict[int, dict[str, str]]:
    """The report line of each rank (the processes share stdout, so lines may run into each other)."""
    reports = {}
    for match in REPORT.finditer(output):
        fields = dict(item.split("=", 1) for item in match.group(0).split())
        reports[int(fields["rank"])] = fields
    return reports


def check_two_ranks_trained_together(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    reports = ranks_reported(result.stdout)
    assert sorted(reports) == [0, 1], result.stdout + result.stderr
    for report in reports.values():
        assert report["world"] == "2"
        assert report["strategy"] == "DDPStrategy"
        assert report["precision"] == "bf16-mixed"
        assert report["batches"] == "4"  # 64 samples / 8 per batch / 2 processes
        assert report["same"] == "True"
    assert reports[0]["checksum"] == reports[1]["checksum"]


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "train.py"
    path.write_text(TRAIN_SCRIPT)
    return path


def test_five_step_conversion_with_launch(script: Path) -> None:
    result = run([sys.executable, str(script), "--explicit"], cwd=script.parent)
    check_two_ranks_trained_together(result)


def test_five_step_conversion_with_fabric_run(script: Path) -> None:
    command = [sys.executable, "-m", "fabric_core.cli", "run", "--accelerator", "cpu", "--devices", "2"]
    command += ["--strategy", "ddp", "--precision", "bf16-mixed", str(script)]
    result = run(command, cwd=script.parent)
    check_two_ranks_trained_together(result)


def test_fabric_run_with_arguments_in_the_script_and_without_launch(script: Path) -> None:
    """Flags equal to the command line's are accepted, and a script that never calls launch() joins on first use."""
    command = [sys.executable, "-m", "fabric_core.cli", "run", str(script), "--accelerator", "cpu", "--devices", "2"]
    command += ["--strategy", "ddp", "--precision", "bf16-mixed", "--explicit", "--no-launch"]
    result = run(command, cwd=script.parent)
    check_two_ranks_trained_together(result)


SPAWN_SCRIPT = textwrap.dedent(
    """
    import torch
    from fabric_core import Fabric


    def work(fabric, offset):
        total = fabric.all_reduce(torch.tensor(float(fabric.global_rank + offset)), reduce_op="sum")
        return {"rank": fabric.global_rank, "total": float(total)}


    if __name__ == "__main__":
        fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn")
        result = fabric.launch(work, 10)
        print("RESULT", result, flush=True)
    """
)


def test_launch_with_spawn_returns_rank_zero_result(tmp_path: Path) -> None:
    script = tmp_path / "spawn.py"
    script.write_text(SPAWN_SCRIPT)
    result = run([sys.executable, str(script)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RESULT {'rank': 0, 'total': 21.0}" in result.stdout


FAILING_SCRIPT = textwrap.dedent(
    """
    import time
    from fabric_core import Fabric

    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    fabric.launch()
    fabric.barrier()
    if fabric.global_rank == 1:
        raise RuntimeError("rank one broke on purpose")
    time.sleep(0.5)
    fabric.barrier()  # rank 0 would wait here forever if nobody stopped it
    print("unreachable", flush=True)
    """
)


def test_a_failing_rank_stops_the_run_with_its_error(tmp_path: Path) -> None:
    script = tmp_path / "failing.py"
    script.write_text(FAILING_SCRIPT)
    result = run([sys.executable, str(script)], cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert "rank one broke on purpose" in result.stderr
    assert "unreachable" not in result.stdout
    result = run([sys.executable, "-m", "fabric_core.cli", "run", "--devices", "2", str(script)], cwd=tmp_path)
    assert result.returncode != 0
    assert "rank one broke on purpose" in result.stderr
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("fabric run: "), result.stderr
    assert re.search(r"rank 1 \(local rank 1, pid \d+\) failed with exit code 1", summary), summary
