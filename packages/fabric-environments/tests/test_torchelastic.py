from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from fabric_environments import TorchElasticEnvironment
from fabric_utils import FabricWarning

_TORCHRUN_VARIABLES = {
    "MASTER_ADDR": "10.1.2.3",
    "MASTER_PORT": "29400",
    "WORLD_SIZE": "8",
    "RANK": "5",
    "LOCAL_RANK": "1",
    "GROUP_RANK": "1",
    "LOCAL_WORLD_SIZE": "4",
}


@pytest.fixture
def torchrun_env(monkeypatch: pytest.MonkeyPatch) -> TorchElasticEnvironment:
    for name, value in _TORCHRUN_VARIABLES.items():
        monkeypatch.setenv(name, value)
    return TorchElasticEnvironment()


def test_values_come_from_torchrun_variables(torchrun_env: TorchElasticEnvironment) -> None:
    env = torchrun_env
    assert TorchElasticEnvironment.detect()
    assert env.creates_processes_externally
    assert (env.main_address, env.main_port) == ("10.1.2.3", 29400)
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (8, 5, 1, 1)
    assert env.local_world_size() == 4


@pytest.mark.parametrize("missing", ["RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"])
def test_detect_needs_every_torchrun_variable(
    torchrun_env: TorchElasticEnvironment, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    monkeypatch.delenv(missing)
    assert not TorchElasticEnvironment.detect()


def test_not_detected_without_torchrun() -> None:
    assert not TorchElasticEnvironment.detect()


def test_missing_address_defaults_without_writing_the_environment(
    torchrun_env: TorchElasticEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MASTER_ADDR")
    assert torchrun_env.main_address == "127.0.0.1"
    assert "MASTER_ADDR" not in os.environ


def test_missing_port_or_world_size_raise_naming_the_variable(
    torchrun_env: TorchElasticEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MASTER_PORT")
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(ValueError, match="MASTER_PORT"):
        torchrun_env.main_port  # noqa: B018
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        torchrun_env.world_size()


def test_setters_are_ignored_and_warn_on_a_different_value(torchrun_env: TorchElasticEnvironment) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torchrun_env.set_world_size(8)
        torchrun_env.set_global_rank(5)
    with pytest.warns(FabricWarning, match=r"set_world_size\(2\) was ignored.*8"):
        torchrun_env.set_world_size(2)
    with pytest.warns(FabricWarning, match=r"set_global_rank\(0\) was ignored.*5"):
        torchrun_env.set_global_rank(0)
    assert (torchrun_env.world_size(), torchrun_env.global_rank()) == (8, 5)


def test_validate_settings(torchrun_env: TorchElasticEnvironment) -> None:
    torchrun_env.validate_settings(num_devices=4, num_nodes=2)
    with pytest.raises(ValueError, match=r"devices=2.*LOCAL_WORLD_SIZE=4.*--nproc-per-node=2"):
        torchrun_env.validate_settings(num_devices=2, num_nodes=4)
    with pytest.raises(ValueError, match=r"4 \* 1 = 4 processes.*started 8.*--nnodes=1"):
        torchrun_env.validate_settings(num_devices=4, num_nodes=1)


_WORKER = """
import json, os, sys
from fabric_environments import TorchElasticEnvironment, detect_environment

env = detect_environment()
record = {
    "type": type(env).__name__,
    "external": env.creates_processes_externally,
    "address": env.main_address,
    "port": env.main_port,
    "ranks": [env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()],
}
env.validate_settings(num_devices=2, num_nodes=1)
with open(os.path.join(sys.argv[1], f"rank{env.global_rank()}.json"), "w") as f:
    json.dump(record, f)
"""


def test_real_torchrun_workers(tmp_path: Path) -> None:
    """Two workers started by torch's elastic launcher detect TorchElastic and agree on the rendezvous."""
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)]
    result = subprocess.run([*command, str(tmp_path)], capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    for rank, record in enumerate(records):
        assert record["type"] == "TorchElasticEnvironment"
        assert record["external"] is True
        assert record["ranks"] == [2, rank, rank, 0]
    assert records[0]["address"] == records[1]["address"]
    assert records[0]["port"] == records[1]["port"]
