"""``fabric run``: validation (exit code 2 and one line), what it passes to the processes, restarts and failures."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fabric_core.cli import main
from fabric_core.cli.run import RunConfig, build_run_config, torchrun_arguments
from fabric_utils import override_hardware


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "train.py"
    path.write_text("print('hi')\n")
    return path


def usage_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.mark.parametrize(
    ("options", "named", "listed"),
    [
        (["--accelerator", "tpuu"], "'tpuu'", "cpu"),
        (["--strategy", "ddpp"], "'ddpp'", "ddp_spawn"),
        (["--precision", "15-mixed"], "15-mixed", "bf16-mixed"),
        (["--devices", "0"], "0", "--devices"),
        (["--devices", "two"], "two", "--devices"),
        (["--num-nodes", "0"], "0", "x>=1"),
        (["--node-rank", "2", "--num-nodes", "2"], "2", "0 to 1"),
        (["--main-port", "70000"], "70000", "1<=x<=65535"),
        (["--max-restarts", "-1"], "-1", "x>=0"),
        (["--accelerator", "cuda"], "'cuda'", "cpu"),
        (["--accelerator", "cpu", "--strategy", "single_device", "--devices", "2"], "single_device", "ddp"),
    ],
)
def test_bad_options_exit_2_with_one_line(
    options: list[str], named: str, listed: str, script: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with override_hardware(cuda_device_count=0, mps_available=False):
        line = usage_error(["run", *options, str(script)], capsys)
    assert named in line
    assert listed in line


def test_missing_or_absent_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "Missing SCRIPT" in usage_error(["run", "--devices", "2"], capsys)
    assert "'nothere.py' does not exist" in usage_error(["run", "nothere.py"], capsys)
    assert "No such option: --devicez" in usage_error(["run", "--devicez", "2"], capsys)
    assert "no such command" in usage_error(["runn"], capsys).lower()


def config(*args: str, **options: object) -> RunConfig:
    defaults: dict[str, object] = {
        "accelerator": None,
        "strategy": None,
        "devices": None,
        "num_nodes": None,
        "node_rank": 0,
        "main_address": "127.0.0.1",
        "main_port": None,
        "precision": None,
        "max_restarts": 0,
    }
    return build_run_config(args, options.pop("module", None), **{**defaults, **options})  # type: ignore[arg-type]


def test_only_the_given_options_reach_the_processes(script: Path) -> None:
    plain = config(str(script), "--lr", "0.1")
    assert plain.environment == {}
    assert plain.processes_per_node == 1
    assert plain.script_args == ("--lr", "0.1")
    full = config(str(script), accelerator="cpu", strategy="ddp", devices="3", num_nodes=2, precision="bf16-mixed")
    assert full.environment == {
        "FABRIC_ACCELERATOR": "cpu",
        "FABRIC_STRATEGY": "ddp",
        "FABRIC_DEVICES": "3",
        "FABRIC_NUM_NODES": "2",
        "FABRIC_PRECISION": "bf16-mixed",
    }
    assert (full.processes_per_node, full.num_nodes, full.main_port) == (3, 2, 29400)
    assert 1 <= config(str(script)).main_port <= 65535


def test_torchrun_arguments(script: Path) -> None:
    arguments = torchrun_arguments(config(str(script), "--fast", devices="2", main_port=1234, max_restarts=3))
    assert arguments[:6] == [
        "--nproc-per-node=2",
        "--nnodes=1",
        "--node-rank=0",
        "--master-addr=127.0.0.1",
        "--master-port=1234",
        "--max-restarts=3",
    ]
    assert arguments[6:] == [str(script), "--fast"]
    module = torchrun_arguments(config("--x", module="pkg.train", devices="2"))
    assert module[-3:] == ["--module", "pkg.train", "--x"]


def test_dp_runs_one_process_per_node(script: Path) -> None:
    with override_hardware(cuda_device_count=2):
        assert config(str(script), accelerator="cuda", strategy="dp", devices="2").processes_per_node == 1
        assert config(str(script), accelerator="cuda", devices="0,1").processes_per_node == 2


def fabric(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FABRIC_", "PYTEST_"))}
    env["PYTHONPATH"] = str(cwd) + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "fabric_core.cli", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


REPORT_SCRIPT = textwrap.dedent(
    """
    import os, sys
    names = ["FABRIC_ACCELERATOR", "FABRIC_STRATEGY", "FABRIC_DEVICES", "FABRIC_NUM_NODES", "FABRIC_PRECISION"]
    values = " ".join(f"{n}={os.environ.get(n)}" for n in names)
    sys.stdout.write(f"rank={os.environ['RANK']} world={os.environ['WORLD_SIZE']} args={sys.argv[1:]} {values}\\n")
    """
)


def test_the_executable_starts_a_module_with_the_choices_in_the_environment(tmp_path: Path) -> None:
    (tmp_path / "report_env.py").write_text(REPORT_SCRIPT)
    result = fabric(
        "run",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--precision",
        "bf16-mixed",
        "-m",
        "report_env",
        "--",
        "--a",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    for rank in (0, 1):
        assert f"rank={rank} world=2 args=['--a']" in result.stdout
    assert "FABRIC_ACCELERATOR=cpu FABRIC_STRATEGY=None FABRIC_DEVICES=2 FABRIC_NUM_NODES=None" in result.stdout
    assert "FABRIC_PRECISION=bf16-mixed" in result.stdout


RESTART_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path

    marker = Path(sys.argv[1]) / f"attempt-{os.environ['RANK']}"
    attempts = int(marker.read_text()) + 1 if marker.exists() else 1
    marker.write_text(str(attempts))
    if attempts == 1 and os.environ["RANK"] == "1":
        sys.exit(3)
    print(f"rank {os.environ['RANK']} finished on attempt {attempts}", flush=True)
    """
)


def test_max_restarts_restarts_the_processes(tmp_path: Path) -> None:
    script = tmp_path / "flaky.py"
    script.write_text(RESTART_SCRIPT)
    result = fabric("run", "--devices", "2", "--max-restarts", "1", str(script), str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "rank 1 finished on attempt 2" in result.stdout
    without = tmp_path / "again"
    without.mkdir()
    result = fabric("run", "--devices", "2", str(script), str(without), cwd=tmp_path)
    assert result.returncode == 3
    assert "fabric run: rank 1" in result.stderr
    assert "exit code 3" in result.stderr


def test_the_installed_executable_reports_usage_errors_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        ["fabric", "run", "--strategy", "nope", "x.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "nope" in result.stderr
