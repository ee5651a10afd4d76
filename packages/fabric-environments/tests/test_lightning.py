from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest

from fabric_environments import LightningEnvironment


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_local_defaults() -> None:
    env = LightningEnvironment()
    assert LightningEnvironment.detect()
    assert not env.creates_processes_externally
    assert env.main_address == "127.0.0.1"
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (1, 0, 0, 0)


def test_free_port_is_picked_once_and_cached() -> None:
    env = LightningEnvironment()
    port = env.main_port
    assert 1 <= port <= 65535
    assert _bindable(port), "the picked port must be free"
    assert all(env.main_port == port for _ in range(5))
    assert "MASTER_PORT" not in os.environ  # exposed through the property, never written into the environment


def test_teardown_forgets_the_picked_port() -> None:
    env = LightningEnvironment()
    first = env.main_port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:  # occupy it: a fresh pick must avoid it
        holder.bind(("", first))
        holder.listen()
        env.teardown()
        second = env.main_port
    assert second != first
    assert env.main_port == second


def test_master_port_in_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    env = LightningEnvironment()
    env.main_port  # noqa: B018 - a picked port must not shadow a MASTER_PORT set afterwards
    monkeypatch.setenv("MASTER_PORT", "29511")
    assert env.main_port == 29511


def test_reads_launcher_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "MASTER_ADDR": "10.0.0.7",
        "MASTER_PORT": "12345",
        "WORLD_SIZE": "8",
        "RANK": "5",
        "LOCAL_RANK": "1",
        "NODE_RANK": "2",
    }.items():
        monkeypatch.setenv(name, value)
    env = LightningEnvironment()
    assert env.creates_processes_externally
    assert (env.main_address, env.main_port) == ("10.0.0.7", 12345)
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (8, 5, 1, 2)


def test_alternative_rank_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLOBAL_RANK", "3")
    monkeypatch.setenv("GROUP_RANK", "1")
    env = LightningEnvironment()
    assert (env.global_rank(), env.node_rank()) == (3, 1)
    assert not env.creates_processes_externally  # only LOCAL_RANK says a launcher started this process


def test_setters_take_precedence_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "5")
    env = LightningEnvironment()
    env.set_world_size(4)
    env.set_global_rank(3)
    assert (env.world_size(), env.global_rank()) == (4, 3)
    assert os.environ["WORLD_SIZE"] == "8"


@pytest.mark.parametrize("size", [0, -1, 1.5, True, "2"])
def test_set_world_size_rejects_bad_values(size: object) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(size))):
        LightningEnvironment().set_world_size(size)  # type: ignore[arg-type]


@pytest.mark.parametrize("rank", [-1, 0.0, None])
def test_set_global_rank_rejects_bad_values(rank: object) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(rank))):
        LightningEnvironment().set_global_rank(rank)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "value", "read", "message"),
    [
        ("WORLD_SIZE", "two", lambda env: env.world_size(), "WORLD_SIZE='two' must be an integer"),
        ("LOCAL_RANK", "x", lambda env: env.local_rank(), "LOCAL_RANK='x' must be an integer"),
        ("NODE_RANK", "1.5", lambda env: env.node_rank(), "NODE_RANK='1.5' must be an integer"),
        ("MASTER_PORT", "70000", lambda env: env.main_port, "MASTER_PORT=70000 is not a valid port"),
        ("MASTER_PORT", "0", lambda env: env.main_port, "MASTER_PORT=0 is not a valid port"),
    ],
)
def test_malformed_variables_raise_naming_them(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, read: Callable[[LightningEnvironment], object], message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        read(LightningEnvironment())


def test_process_variables_describe_each_child() -> None:
    env = LightningEnvironment()
    env.set_world_size(4)
    child = env.process_variables(local_rank=1, local_world_size=2)
    assert child == {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(env.main_port),
        "NODE_RANK": "0",
        "LOCAL_RANK": "1",
        "RANK": "1",
        "WORLD_SIZE": "4",
    }
    with pytest.raises(ValueError, match="local_rank=2"):
        env.process_variables(local_rank=2, local_world_size=2)
    env.set_world_size(1)
    with pytest.raises(ValueError, match="set_world_size"):
        env.process_variables(local_rank=0, local_world_size=2)


_CHILD = """
import json, sys
import torch
import torch.distributed as dist
from fabric_environments import LightningEnvironment, detect_environment

env = LightningEnvironment()
dist.init_process_group(
    "gloo", init_method=f"tcp://{env.main_address}:{env.main_port}",
    rank=env.global_rank(), world_size=env.world_size(),
)
total = torch.tensor([env.global_rank() + 1.0])
dist.all_reduce(total)
dist.destroy_process_group()
print(json.dumps({
    "detected": type(detect_environment()).__name__,
    "external": env.creates_processes_externally,
    "address": env.main_address, "port": env.main_port,
    "ranks": [env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()],
    "sum": total.item(),
}))
"""


def test_started_processes_share_the_picked_port_and_meet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two real processes started with ``process_variables`` rendezvous at the port the parent picked."""
    env = LightningEnvironment()
    env.set_world_size(2)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            env={**os.environ, **env.process_variables(local_rank=rank, local_world_size=2)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    results = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    for rank, result in enumerate(results):
        assert result["detected"] == "LightningEnvironment"
        assert result["external"] is True
        assert (result["address"], result["port"]) == ("127.0.0.1", env.main_port)
        assert result["ranks"] == [2, rank, rank, 0]
        assert result["sum"] == 3.0
