"""The quickest examples, run for real: ``fabric run --accelerator cpu --devices 2 SCRIPT --fast`` in a subprocess.

Each example prints one ``final: ...`` line on global rank zero as its last line; the tests check that the run
succeeded and that the numbers in that line show the training worked. The other examples (MAML, the language
model, PPO and the image classifier) run in ``nox -s examples`` and ``nox -s demo``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT = 300


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
    return finals[0]


def test_kfold_cross_validation(tmp_path: Path) -> None:
    final = run_example("kfold.py", tmp_path)
    match = re.fullmatch(r"final: mean validation accuracy ([\d.]+)% \(std ([\d.]+)%\) over 5 folds", final)
    assert match, final
    assert float(match.group(1)) > 85.0  # three noisy rings: chance is 33%


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
    assert len(list((tmp_path / "fabric_logs" / "trainer_template").glob("version_*/metrics.csv"))) == 3
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
