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
    assert config(str(script)).main_port == 0  # one node: the rendezvous takes any free port


def test_torchrun_arguments_use_a_c10d_rendezvous_hosted_by_node_0(script: Path) -> None:
    run_config = config(str(script), "--fast", devices="2", main_port=1234, max_restarts=3)
    arguments = torchrun_arguments(run_config)
    assert arguments[:8] == [
        "--nproc-per-node=2",
        "--nnodes=1",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=127.0.0.1:1234",
        f"--rdzv-id={run_config.rendezvous_id}",
        "--rdzv-conf=is_host=true",
        "--max-restarts=3",
        "--local-addr=127.0.0.1",
    ]
    assert arguments[8:] == [str(script), "--fast"]
    assert not any(a.startswith(("--master-", "--node-rank")) for a in arguments)  # static rendezvous options
    module = torchrun_arguments(config("--x", module="pkg.train", devices="2"))
    assert module[-3:] == ["--module", "pkg.train", "--x"]
    assert "--rdzv-endpoint=127.0.0.1:0" in module


def test_every_single_node_run_has_its_own_rendezvous_id(script: Path) -> None:
    ids = {config(str(script)).rendezvous_id for _ in range(3)}
    assert len(ids) == 3


@pytest.mark.parametrize("node_rank", [0, 1, 2])
def test_the_nodes_of_a_job_share_the_rendezvous_and_only_node_0_hosts_it(script: Path, node_rank: int) -> None:
    options = {"accelerator": "cpu", "devices": "2", "num_nodes": 3, "main_address": "10.1.2.3"}
    arguments = torchrun_arguments(config(str(script), node_rank=node_rank, **options))
    assert "--nnodes=3" in arguments
    assert "--rdzv-endpoint=10.1.2.3:29400" in arguments
    assert "--rdzv-id=fabric-run-29400" in arguments  # derived alike on every node
    assert f"--rdzv-conf=is_host={'true' if node_rank == 0 else 'false'}" in arguments
    assert ("--local-addr=10.1.2.3" in arguments) == (node_rank == 0)
    other_port = torchrun_arguments(config(str(script), node_rank=node_rank, main_port=4000, **options))
    assert "--rdzv-id=fabric-run-4000" in other_port


def test_an_ipv6_main_address_is_bracketed(script: Path) -> None:
    arguments = torchrun_arguments(config(str(script), main_address="::1", main_port=1234))
    assert "--rdzv-endpoint=[::1]:1234" in arguments
    arguments = torchrun_arguments(config(str(script), main_address="[::1]", main_port=1234))
    assert "--rdzv-endpoint=[::1]:1234" in arguments


def test_torchrun_accepts_the_arguments(script: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun's own parser and configuration read them as a c10d rendezvous (nothing is started)."""
    from torch.distributed.run import config_from_args, get_args_parser

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torchrun would set it for 2 processes

    run_config = config(str(script), "--fast", devices="2", main_port=1234, max_restarts=2, node_rank=0, num_nodes=2)
    launch_config, _, command_args = config_from_args(get_args_parser().parse_args(torchrun_arguments(run_config)))
    assert (launch_config.rdzv_backend, launch_config.rdzv_endpoint) == ("c10d", "127.0.0.1:1234")
    assert (launch_config.min_nodes, launch_config.max_nodes, launch_config.nproc_per_node) == (2, 2, 2)
    assert launch_config.run_id == run_config.rendezvous_id
    assert launch_config.rdzv_configs["is_host"] == "true"
    assert launch_config.max_restarts == 2
    assert launch_config.local_addr == "127.0.0.1"
    assert command_args[-2:] == [str(script), "--fast"]


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


PROCESS_GROUP_RESTART_SCRIPT = textwrap.dedent(
    """
    import os, time
    from datetime import timedelta
    import torch, torch.distributed as dist

    rank, attempt = int(os.environ["RANK"]), os.environ["TORCHELASTIC_RESTART_COUNT"]
    address, port = os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]
    dist.init_process_group(
        "gloo", init_method=f"tcp://{address}:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=30)
    )
    total = torch.ones(1)
    dist.all_reduce(total)
    with open(f"attempt{attempt}-rank{rank}.txt", "w") as f:  # a file per process: stdout lines can interleave
        f.write(f"port {port} sum {int(total.item())}")
    if attempt == "0":
        if rank == 1:
            raise SystemExit(3)  # the process group of this attempt is up: its addresses are in the store
        time.sleep(60)  # rank 0 stays in it until the launcher stops it
    dist.destroy_process_group()
    """
)


def test_restarted_processes_form_their_process_group_in_a_fresh_store(tmp_path: Path) -> None:
    """The second attempt's gloo group connects (a store shared with the failed attempt would hand it the dead
    processes' addresses) because its MASTER_PORT is a new store's."""
    script = tmp_path / "pg_restart.py"
    script.write_text(PROCESS_GROUP_RESTART_SCRIPT)
    result = fabric("run", "--accelerator", "cpu", "--devices", "2", "--max-restarts", "1", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    ports = {}
    for attempt in ("0", "1"):
        for rank in (0, 1):
            report = tmp_path / f"attempt{attempt}-rank{rank}.txt"
            assert report.exists(), f"attempt {attempt} rank {rank} wrote nothing:\n{result.stdout}{result.stderr}"
            line = report.read_text()
            assert line.endswith(" sum 2"), line
            ports[attempt, rank] = line.split()[1]
    assert ports["0", 0] == ports["0", 1]
    assert ports["1", 0] == ports["1", 1]
    assert ports["0", 0] != ports["1", 0]


def test_the_installed_executable_reports_usage_errors_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        ["fabric", "run", "--strategy", "nope", "x.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "nope" in result.stderr
