from __future__ import annotations

import socket
import warnings

import pytest

from fabric_environments._env import (
    check_port,
    check_world_size,
    env_int,
    env_port,
    find_free_port,
    first_env_int,
    ignore_setter,
)
from fabric_utils import FabricWarning


def test_env_int(monkeypatch: pytest.MonkeyPatch) -> None:
    assert env_int("FABRIC_TEST_INT", 7) == 7
    monkeypatch.setenv("FABRIC_TEST_INT", " 12 ")
    assert env_int("FABRIC_TEST_INT") == 12
    monkeypatch.setenv("FABRIC_TEST_INT", "")
    assert env_int("FABRIC_TEST_INT", 3) == 3
    with pytest.raises(ValueError, match="MyEnvironment needs the environment variable FABRIC_TEST_INT"):
        env_int("FABRIC_TEST_INT", owner="MyEnvironment")
    monkeypatch.setenv("FABRIC_TEST_INT", "1e3")
    with pytest.raises(ValueError, match="FABRIC_TEST_INT='1e3' must be an integer"):
        env_int("FABRIC_TEST_INT", 0)


def test_first_env_int(monkeypatch: pytest.MonkeyPatch) -> None:
    assert first_env_int(("FABRIC_TEST_A", "FABRIC_TEST_B"), 9) == 9
    monkeypatch.setenv("FABRIC_TEST_B", "2")
    assert first_env_int(("FABRIC_TEST_A", "FABRIC_TEST_B"), 9) == 2
    monkeypatch.setenv("FABRIC_TEST_A", "1")
    assert first_env_int(("FABRIC_TEST_A", "FABRIC_TEST_B"), 9) == 1


def test_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    assert env_port("FABRIC_TEST_PORT") is None
    monkeypatch.setenv("FABRIC_TEST_PORT", "65535")
    assert env_port("FABRIC_TEST_PORT") == 65535
    with pytest.raises(ValueError, match="SOURCE=65536 is not a valid port: choose one between 1 and 65535"):
        check_port(65536, source="SOURCE")


def test_find_free_port_returns_a_bindable_port() -> None:
    port = find_free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_check_world_size() -> None:
    check_world_size("launcher", 8, 4, 2)
    with pytest.raises(ValueError, match=r"devices=3 and num_nodes=2.*3 \* 2 = 6 processes.*launcher started 8\. HINT"):
        check_world_size("launcher", 8, 3, 2, hint="HINT: do this")


def test_ignore_setter_warns_only_on_a_different_value() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ignore_setter("Env", "world_size", 4, 4)
    expected = r"Env.set_world_size\(2\) was ignored: the launcher fixed the world size to 4"
    with pytest.warns(FabricWarning, match=expected):
        ignore_setter("Env", "world_size", 2, 4)
