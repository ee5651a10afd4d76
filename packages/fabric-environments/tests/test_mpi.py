from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fabric_environments import MPIEnvironment
from fabric_testing import RunIf
from fabric_utils import MPI4PY, MissingDependencyError

MPIRUN = shutil.which("mpirun")
needs_mpirun = pytest.mark.skipif(
    MPIRUN is None,
    reason="needs an MPI launcher: `mpirun` is not on PATH (apt-get install openmpi-bin libopenmpi-dev; the nox"
    " session installs it when it can)",
)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("OMPI_COMM_WORLD_SIZE", "2", True),
        ("PMI_SIZE", "4", True),
        ("MV2_COMM_WORLD_SIZE", "16", True),
        ("OMPI_COMM_WORLD_SIZE", "1", False),
        ("PMI_SIZE", "lots", False),
        ("PMI_SIZE", "", False),
    ],
)
@RunIf(mpi=True)
def test_detect_from_launcher_hints(monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: bool) -> None:
    monkeypatch.setenv(variable, value)
    assert MPIEnvironment.detect() is expected


def test_not_detected_without_a_launcher() -> None:
    assert MPIEnvironment.detect() is False


@RunIf(mpi=True)
def test_detect_and_construction_do_not_initialise_mpi(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing ``mpi4py.MPI`` initialises MPI: only the first question to the environment may do that."""
    if "mpi4py.MPI" in sys.modules:
        pytest.skip("mpi4py.MPI was imported by something else in this process")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert MPIEnvironment.detect()
    env = MPIEnvironment()
    assert env.creates_processes_externally
    assert "mpi4py.MPI" not in sys.modules


@pytest.mark.skipif(MPI4PY.available, reason="mpi4py is installed here; this checks the error where it is missing")
def test_constructor_needs_mpi4py() -> None:
    with pytest.raises(MissingDependencyError, match="pip install mpi4py"):
        MPIEnvironment()


_RANK_SCRIPT = """
import json, os, sys
import torch
import torch.distributed as dist
from fabric_environments import MPIEnvironment, detect_environment

before = dict(os.environ)
detected = type(detect_environment()).__name__
env = MPIEnvironment()
record = {
    "detect": MPIEnvironment.detect(),
    "detected": detected,
    "external": env.creates_processes_externally,
    "world_size": env.world_size(),
    "global_rank": env.global_rank(),
    "local_rank": env.local_rank(),
    "node_rank": env.node_rank(),
    "address": env.main_address,
    "port": env.main_port,
}
record["environ_unchanged"] = dict(os.environ) == before
env.validate_settings(num_devices=2, num_nodes=1)
env.validate_ranks()  # MPI's own rank and size agree
try:
    env.validate_settings(num_devices=1, num_nodes=1)
    record["mismatch_error"] = None
except ValueError as err:
    record["mismatch_error"] = str(err)
dist.init_process_group(
    "gloo", init_method=f"tcp://{env.main_address}:{env.main_port}",
    rank=env.global_rank(), world_size=env.world_size(),
)
total = torch.tensor([env.global_rank() + 1.0])
dist.all_reduce(total)
dist.destroy_process_group()
record["sum"] = total.item()
env.teardown()
with open(os.path.join(sys.argv[1], f"rank{record['global_rank']}.json"), "w") as f:
    json.dump(record, f)
"""


def _mpirun_command(n: int) -> list[str]:
    assert MPIRUN is not None
    version = subprocess.run([MPIRUN, "--version"], capture_output=True, text=True, timeout=60, check=False)
    command = [MPIRUN, "-n", str(n)]
    if "Open MPI" in version.stdout + version.stderr:
        command += ["--allow-run-as-root", "--oversubscribe"]
    return command


@needs_mpirun
@RunIf(mpi=True)
def test_two_real_mpi_ranks(tmp_path: Path) -> None:
    """``mpirun -n 2``: ranks 0 and 1 of 2 on one node, one shared address and port, and a working process group."""
    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    command = [*_mpirun_command(2), sys.executable, str(script), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    records = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    for rank, record in enumerate(records):
        assert record["detect"] is True
        assert record["detected"] == "MPIEnvironment"
        assert record["external"] is True
        assert record["environ_unchanged"] is True
        assert (record["world_size"], record["global_rank"]) == (2, rank)
        assert (record["local_rank"], record["node_rank"]) == (rank, 0)
        assert record["sum"] == 3.0
        assert "1 * 1 = 1 processes" in record["mismatch_error"]
    assert records[0]["address"] == records[1]["address"] == "127.0.0.1"
    assert records[0]["port"] == records[1]["port"]
    assert 1 <= records[0]["port"] <= 65535
