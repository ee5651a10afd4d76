from __future__ import annotations

import socket
from pathlib import Path

import pytest

from fabric_environments import LSFEnvironment

HOST = socket.gethostname()


@pytest.fixture
def jsrun_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LSFEnvironment:
    """A jsrun task on this host, the second compute node of the job (after the launch node's slot)."""
    rankfile = tmp_path / "rankfile"
    rankfile.write_text("\n".join(["launch", "other", "other", HOST, HOST, ""]))
    for name, value in {
        "LSB_JOBID": "123456",
        "LSB_DJOB_RANKFILE": str(rankfile),
        "JSM_NAMESPACE_SIZE": "4",
        "JSM_NAMESPACE_RANK": "3",
        "JSM_NAMESPACE_LOCAL_RANK": "1",
    }.items():
        monkeypatch.setenv(name, value)
    return LSFEnvironment()


def test_values_come_from_jsm_and_the_rank_file(jsrun_env: LSFEnvironment) -> None:
    assert LSFEnvironment.detect()
    assert jsrun_env.creates_processes_externally
    assert jsrun_env.compute_hosts() == ["other", "other", HOST, HOST]
    assert jsrun_env.main_address == "other"
    assert jsrun_env.main_port == 10000 + 456
    assert (jsrun_env.world_size(), jsrun_env.global_rank(), jsrun_env.local_rank()) == (4, 3, 1)
    assert jsrun_env.node_rank() == 1


def test_master_variables_take_precedence(jsrun_env: LSFEnvironment, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.9")
    monkeypatch.setenv("MASTER_PORT", "23456")
    assert (jsrun_env.main_address, jsrun_env.main_port) == ("10.0.0.9", 23456)


def test_hosts_from_lsb_mcpu_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "LSB_JOBID": "7",
        "LSB_MCPU_HOSTS": f"launch 1 {HOST} 2 other 2",
        "JSM_NAMESPACE_SIZE": "4",
        "JSM_NAMESPACE_RANK": "0",
        "JSM_NAMESPACE_LOCAL_RANK": "0",
    }.items():
        monkeypatch.setenv(name, value)
    env = LSFEnvironment()
    assert LSFEnvironment.detect()
    assert env.compute_hosts() == [HOST, HOST, "other", "other"]
    assert (env.main_address, env.node_rank(), env.main_port) == (HOST, 0, 10007)


def test_a_single_host_list_keeps_its_host(jsrun_env: LSFEnvironment, tmp_path: Path) -> None:
    (tmp_path / "rankfile").write_text(f"{HOST}\n")
    assert jsrun_env.compute_hosts() == [HOST]
    assert jsrun_env.node_rank() == 0


def test_a_fully_qualified_host_name_matches_the_short_one(jsrun_env: LSFEnvironment, tmp_path: Path) -> None:
    (tmp_path / "rankfile").write_text(f"launch\nother.example.org\n{HOST}.example.org\n")
    assert jsrun_env.node_rank() == 1


@pytest.mark.parametrize(
    "missing", ["LSB_JOBID", "JSM_NAMESPACE_SIZE", "JSM_NAMESPACE_LOCAL_RANK", "LSB_DJOB_RANKFILE"]
)
def test_detect_needs_the_job_jsm_and_a_host_list(
    jsrun_env: LSFEnvironment, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    monkeypatch.delenv(missing)
    assert not LSFEnvironment.detect()


def test_this_host_missing_from_the_job(jsrun_env: LSFEnvironment, tmp_path: Path) -> None:
    (tmp_path / "rankfile").write_text("launch\nnodeA\nnodeB\n")
    with pytest.raises(ValueError, match=rf"{HOST!r} is not among the LSF job's compute hosts \['nodeA', 'nodeB'\]"):
        jsrun_env.node_rank()


def test_unreadable_or_empty_rank_file(
    jsrun_env: LSFEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("LSB_DJOB_RANKFILE", str(missing))
    with pytest.raises(ValueError, match=f"Cannot read the LSF rank file LSB_DJOB_RANKFILE='{missing}'"):
        LSFEnvironment().main_address  # noqa: B018
    (tmp_path / "empty").write_text("\n\n")
    monkeypatch.setenv("LSB_DJOB_RANKFILE", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="lists no host"):
        LSFEnvironment().main_address  # noqa: B018


@pytest.mark.parametrize(
    ("value", "problem"), [("hostA 4 hostB", "pairs of host"), ("hostA four", "'four'"), ("", "pairs")]
)
def test_malformed_lsb_mcpu_hosts(monkeypatch: pytest.MonkeyPatch, value: str, problem: str) -> None:
    monkeypatch.setenv("LSB_MCPU_HOSTS", value)
    with pytest.raises(ValueError, match=problem):
        LSFEnvironment().compute_hosts()


def test_missing_variables_raise_naming_them(jsrun_env: LSFEnvironment, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LSB_JOBID")
    monkeypatch.delenv("JSM_NAMESPACE_RANK")
    with pytest.raises(ValueError, match="LSB_JOBID"):
        jsrun_env.main_port  # noqa: B018
    with pytest.raises(ValueError, match="JSM_NAMESPACE_RANK"):
        jsrun_env.global_rank()


def test_validate_settings(jsrun_env: LSFEnvironment) -> None:
    jsrun_env.validate_settings(num_devices=2, num_nodes=2)
    with pytest.raises(ValueError, match=r"4 \* 2 = 8 processes.*jsrun launcher started 4"):
        jsrun_env.validate_settings(num_devices=4, num_nodes=2)
