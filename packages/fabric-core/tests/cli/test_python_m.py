"""``python -m fabric_core`` is the ``fabric`` command: the way around another package's ``fabric`` script."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fabric_core.cli.env_report import distributed_variables

# the `fabric` script this interpreter's environment installed (pip and uv put it next to the interpreter)
SCRIPT = Path(sys.executable).parent / ("fabric.exe" if os.name == "nt" else "fabric")

REPORT = textwrap.dedent(
    """
    import os, sys
    # one file per rank: two ranks printing to one pipe can land on one line
    with open(f"rank-{os.environ['RANK']}.txt", "w") as f:
        f.write(f"rank={os.environ['RANK']} world={os.environ['WORLD_SIZE']} "
                f"strategy={os.environ.get('FABRIC_STRATEGY')} args={sys.argv[1:]}")
    """
)


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    inherited = distributed_variables(dict(os.environ))
    env = {k: v for k, v in os.environ.items() if k not in inherited and not k.startswith("PYTEST_")}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def script() -> Path:
    assert SCRIPT.is_file(), f"the fabric script is not installed next to {sys.executable}"
    return SCRIPT


def test_version_and_help_match_the_script(script: Path, tmp_path: Path) -> None:
    for args in (["--version"], ["run", "--help"]):
        by_module = run([sys.executable, "-m", "fabric_core", *args], tmp_path)
        by_script = run([str(script), *args], tmp_path)
        assert by_module.returncode == by_script.returncode == 0, by_module.stderr + by_script.stderr
        assert by_module.stdout == by_script.stdout
    assert by_module.stdout.startswith("Usage: fabric run ")


def test_usage_error_matches_the_script(script: Path, tmp_path: Path) -> None:
    args = ["run", "--devices", "two", "train.py"]
    by_module = run([sys.executable, "-m", "fabric_core", *args], tmp_path)
    by_script = run([str(script), *args], tmp_path)
    assert by_module.returncode == by_script.returncode == 2
    assert by_module.stderr == by_script.stderr
    assert "two" in by_module.stderr


def test_run_starts_the_same_processes(script: Path, tmp_path: Path) -> None:
    (tmp_path / "report.py").write_text(REPORT)
    args = ["run", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "report.py", "--lr", "0.1"]
    outputs = []
    for command in ([sys.executable, "-m", "fabric_core", *args], [str(script), *args]):
        for report in tmp_path.glob("rank-*.txt"):
            report.unlink()
        result = run(command, tmp_path)
        assert result.returncode == 0, result.stderr
        outputs.append(sorted(report.read_text() for report in tmp_path.glob("rank-*.txt")))
    assert (
        outputs[0]
        == outputs[1]
        == [
            "rank=0 world=2 strategy=ddp args=['--lr', '0.1']",
            "rank=1 world=2 strategy=ddp args=['--lr', '0.1']",
        ]
    )
