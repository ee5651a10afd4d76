"""The quickest examples, run for real: ``fabric run --accelerator cpu --devices 2 SCRIPT --fast`` in a subprocess.

Each example prints one ``final: ...`` line on global rank zero as its last line on stdout (``fabric.progress`` bars
go to stderr); the tests check that the run succeeded and that the numbers in that line show the training worked,
and that the pictures the example writes (loss curves, DCGAN's image grids) are PNGs of the expected size beside
the metrics file and the TensorBoard event files. The examples need ``examples/requirements.txt``. The other
examples (MAML, the language model, PPO and the image classifier) run in ``nox -s examples`` and ``nox -s demo``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# the examples draw with matplotlib and log to TensorBoard: without examples/requirements.txt they cannot run (the
# integration, examples and demo nox sessions install it)
mpimg = pytest.importorskip("matplotlib.image", reason="pip install -r examples/requirements.txt")
pytest.importorskip("tensorboard", reason="pip install -r examples/requirements.txt")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT = 300
CURVES_SHAPE = (400, 1000)  # (height, width) of every loss-curve PNG (examples/_pictures.py: CURVES_SIZE)
# DCGAN's grid: 64 images of 16x16 in 8 columns, 2 pixels apart and around, each pixel drawn 4x4
GRID_SHAPE = ((8 * (16 + 2) + 2) * 4,) * 2


def fabric_command() -> list[str]:
    """The ``fabric`` console script of this interpreter's environment (or the same entry point as a module)."""
    script = Path(sys.executable).parent / "fabric"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "fabric_core.cli"]


def run_example(name: str, cwd: Path) -> str:
    """Run ``examples/<name>`` on 2 CPU processes with ``--fast``; return its last line of output (checked rc 0)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FABRIC_")}
    command = [*fabric_command(), "run", "--accelerator", "cpu", "--devices", "2", str(EXAMPLES / name), "--fast"]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"{name} failed with exit code {result.returncode}:\n{result.stderr[-4000:]}"
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines, f"{name} printed nothing; stderr:\n{result.stderr[-4000:]}"
    finals = [line for line in lines if line.startswith("final:")]
    assert len(finals) == 1, f"{name} should print one final line (on rank zero only), got {finals}"
    assert lines[-1] == finals[0], f"{name}: the final line is not the last one:\n{result.stdout[-2000:]}"
    assert "\r" not in result.stderr  # progress bars off a terminal are plain lines
    return finals[0]


def check_png(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """``path`` is a PNG of ``shape`` (height, width) pixels that shows something (not one flat colour)."""
    assert path.is_file(), f"{path} was not written"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pixels = mpimg.imread(path)
    assert pixels.shape[:2] == shape, f"{path}: {pixels.shape[:2]} pixels, expected {shape}"
    assert pixels.shape[2:] in ((3,), (4,)), f"{path}: {pixels.shape} is not an RGB(A) picture"
    assert float(pixels[..., :3].std()) > 0.01, f"{path} is blank"
    return pixels


def check_run_folder(folder: Path) -> None:
    """One example run's folder: metrics.csv, TensorBoard event files and the loss curves beside them."""
    assert (folder / "metrics.csv").is_file(), sorted(folder.iterdir())
    assert list(folder.glob("events.out.tfevents.*")), f"no TensorBoard files in {folder}: {sorted(folder.iterdir())}"
    check_png(folder / "loss_curves.png", CURVES_SHAPE)


def test_kfold_cross_validation(tmp_path: Path) -> None:
    final = run_example("kfold.py", tmp_path)
    match = re.fullmatch(r"final: mean validation accuracy ([\d.]+)% \(std ([\d.]+)%\) over 5 folds", final)
    assert match, final
    assert float(match.group(1)) > 85.0  # three noisy rings: chance is 33%
    check_run_folder(tmp_path / "fabric_logs" / "kfold" / "version_0")


def test_trainer_template_resumes_exactly(tmp_path: Path) -> None:
    final = run_example("trainer_template.py", tmp_path)
    match = re.fullmatch(
        r"final: validation accuracy ([\d.]+)% after (\d+) steps; resumed weights identical to uninterrupted: (\w+)",
        final,
    )
    assert match, final
    assert match.group(3) == "True"
    assert float(match.group(1)) > 40.0  # four classes: chance is 25%
    assert int(match.group(2)) == 48  # 3 epochs x 32 batches per process / 2 batches per optimizer step
    # what the template writes: a metrics file per run, and checkpoints of the stopped run to resume from
    runs = sorted((tmp_path / "fabric_logs" / "trainer_template").glob("version_*"))
    assert [run.name for run in runs] == ["version_0", "version_1", "version_2"]
    for run in runs:
        check_run_folder(run)
    assert sorted(p.name for p in (tmp_path / "fabric_logs" / "checkpoints" / "stopped").iterdir()) == [
        "step-000020.ckpt",
        "step-000025.ckpt",
    ]


def test_dcgan(tmp_path: Path) -> None:
    final = run_example("dcgan.py", tmp_path)
    match = re.fullmatch(
        r"final: discriminator loss ([\d.]+), generator loss ([\d.]+), largest statistics gap ([\d.]+)", final
    )
    assert match, final
    # neither side has won outright, and generated images look like the real ones in simple statistics
    assert 0.1 < float(match.group(1)) < 1.5
    assert 0.1 < float(match.group(2)) < 3.0
    assert float(match.group(3)) < 0.2
    folder = tmp_path / "fabric_logs" / "dcgan" / "version_0"
    check_run_folder(folder)
    grids = sorted(folder.glob("samples_epoch_*.png"))
    assert [grid.name for grid in grids] == [f"samples_epoch_{epoch:03d}.png" for epoch in range(1, 7)]  # --fast: 6
    first, last = (check_png(grid, GRID_SHAPE) for grid in (grids[0], grids[-1]))
    assert not np.array_equal(first, last)  # the generator changed between the first and the last epoch
