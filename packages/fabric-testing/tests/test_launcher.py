"""run_processes with real spawned processes and a real gloo process group (the functions must be module-level)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from fabric_testing import (
    DistributedTestError,
    destroy_process_group_cleanly,
    find_free_port,
    preload_in_fork_server,
    run_processes,
)


def all_reduce_rank(rank: int, world_size: int, scale: float, *, offset: float = 0.0) -> dict[str, object]:
    tensor = torch.tensor([float(rank + 1)])
    dist.all_reduce(tensor)
    return {
        "rank": rank,
        "world_size": world_size,
        "group_rank": dist.get_rank(),
        "group_size": dist.get_world_size(),
        "backend": dist.get_backend(),
        "sum": tensor.item() * scale + offset,
        "env": {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR")},
    }


def test_each_rank_returns_its_result_from_a_real_gloo_group() -> None:
    results = run_processes(all_reduce_rank, 10.0, world_size=2, offset=1.0)
    assert [r["rank"] for r in results] == [0, 1]
    for rank, result in enumerate(results):
        assert result["group_rank"] == rank
        assert result["world_size"] == result["group_size"] == 2
        assert result["backend"] == "gloo"
        assert result["sum"] == (1 + 2) * 10.0 + 1.0
        assert result["env"] == {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
        }


def fail_on_rank_one(rank: int, world_size: int) -> int:
    if rank == 1:
        raise ValueError(f"boom on rank {rank} of {world_size}")
    return rank


def test_a_failing_rank_is_reported_with_its_exception_and_traceback() -> None:
    with pytest.raises(DistributedTestError) as err:
        run_processes(fail_on_rank_one)
    message = str(err.value)
    assert message.startswith("1 of 2 rank(s) failed:")
    assert "--- rank 1 ---\nValueError: boom on rank 1 of 2" in message
    assert "Traceback (most recent call last)" in message
    assert "in fail_on_rank_one" in message, "the traceback reaches into the test function"
    assert "--- rank 0 ---" not in message
    assert set(err.value.errors) == {1}
    assert isinstance(err.value, AssertionError), "pytest shows it as a test failure"


def fail_everywhere(rank: int, world_size: int) -> None:
    raise RuntimeError(f"rank {rank} cannot continue")


def test_every_failing_rank_is_reported() -> None:
    with pytest.raises(DistributedTestError) as err:
        run_processes(fail_everywhere)
    message = str(err.value)
    assert message.startswith("2 of 2 rank(s) failed:")
    assert "--- rank 0 ---\nRuntimeError: rank 0 cannot continue" in message
    assert "--- rank 1 ---\nRuntimeError: rank 1 cannot continue" in message
    assert set(err.value.errors) == {0, 1}


def fail_while_the_other_waits_in_a_collective(rank: int, world_size: int) -> None:
    if rank == 1:
        raise KeyError("rank 1 never joins the all_reduce")
    tensor = torch.ones(1)
    dist.all_reduce(tensor)  # waits for rank 1, which never comes
    time.sleep(600)  # if gloo returned anyway, stay busy: the launcher must still stop this rank


def test_a_rank_stuck_in_a_collective_does_not_hang_the_run() -> None:
    start = time.monotonic()
    with pytest.raises(DistributedTestError) as err:
        run_processes(fail_while_the_other_waits_in_a_collective, pg_timeout=5, timeout=300)
    elapsed = time.monotonic() - start
    assert "--- rank 1 ---\nKeyError: 'rank 1 never joins the all_reduce'" in str(err.value)
    assert elapsed < 60, f"took {elapsed:.0f}s; the stuck rank must be stopped soon after the failure"


def fail_while_the_other_sleeps(rank: int, world_size: int) -> None:
    if rank == 1:
        raise ValueError("rank 1 gave up")
    time.sleep(600)


def test_ranks_still_running_after_a_failure_are_stopped() -> None:
    start = time.monotonic()
    with pytest.raises(DistributedTestError) as err:
        run_processes(fail_while_the_other_sleeps, init_process_group=False, timeout=300)
    elapsed = time.monotonic() - start
    message = str(err.value)
    assert message.startswith("1 of 2 rank(s) failed:")
    assert "--- rank 1 ---\nValueError: rank 1 gave up" in message
    assert "rank(s) [0] were still running 3.0s after the first failure and were stopped" in message
    assert elapsed < 60, f"took {elapsed:.0f}s"


def exit_without_reporting(rank: int, world_size: int) -> int:
    if rank == 0:
        os._exit(3)
    return rank


def test_a_process_that_dies_without_reporting_is_an_error() -> None:
    with pytest.raises(DistributedTestError) as err:
        run_processes(exit_without_reporting, init_process_group=False)
    assert "--- rank 0 ---\nthe process exited with code 3 without reporting a result or an exception" in str(err.value)
    assert set(err.value.errors) == {0}


def system_exit(rank: int, world_size: int) -> None:
    raise SystemExit(f"rank {rank} called sys.exit")


def test_system_exit_is_reported_like_any_exception() -> None:
    with pytest.raises(DistributedTestError, match=r"SystemExit: rank 0 called sys\.exit"):
        run_processes(system_exit, world_size=1, init_process_group=False)


def describe_without_group(rank: int, world_size: int) -> tuple[int, int, bool, str, str]:
    return rank, world_size, dist.is_initialized(), os.environ["RANK"], os.environ["MASTER_PORT"]


def test_without_a_process_group_the_environment_is_still_set() -> None:
    results = run_processes(describe_without_group, world_size=2, init_process_group=False)
    assert [r[:4] for r in results] == [(0, 2, False, "0"), (1, 2, False, "1")]
    assert len({r[4] for r in results}) == 1, "every rank is told the same port"


def read_env_and_reduce(rank: int, world_size: int) -> tuple[str, float]:
    tensor = torch.tensor([2.0**rank])
    dist.all_reduce(tensor)
    return os.environ["FABRIC_LAUNCHER_TEST"], tensor.item()


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_processes_see_the_callers_environment(monkeypatch: pytest.MonkeyPatch, start_method: str) -> None:
    monkeypatch.setenv("FABRIC_LAUNCHER_TEST", f"set-before-{start_method}")
    results = run_processes(read_env_and_reduce, start_method=start_method)  # type: ignore[arg-type]
    assert results == [(f"set-before-{start_method}", 3.0)] * 2


def return_unpicklable(rank: int, world_size: int) -> threading.Lock:
    return threading.Lock()


def test_an_unpicklable_result_is_reported() -> None:
    with pytest.raises(DistributedTestError, match="rank 0 returned lock, which cannot be sent back"):
        run_processes(return_unpicklable, world_size=1, init_process_group=False)


def sleep_forever(rank: int, world_size: int) -> None:
    time.sleep(600)


def test_a_run_past_its_timeout_is_stopped_and_reported() -> None:
    with pytest.raises(DistributedTestError) as err:
        run_processes(sleep_forever, timeout=4, init_process_group=False)
    message = str(err.value)
    assert "--- rank 0 ---\ndid not finish within timeout=4s" in message
    assert "--- rank 1 ---\ndid not finish within timeout=4s" in message


@pytest.mark.parametrize("world_size", [0, -1, 1.5, True])
def test_world_size_must_be_positive(world_size: object) -> None:
    with pytest.raises(ValueError, match=f"world_size must be a positive int, got {world_size!r}"):
        run_processes(sleep_forever, world_size=world_size)  # type: ignore[arg-type]


def test_find_free_port_can_be_bound() -> None:
    port = find_free_port()
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))


def test_destroy_process_group_cleanly() -> None:
    destroy_process_group_cleanly()  # nothing to destroy: no error
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    destroy_process_group_cleanly()
    assert not dist.is_initialized()


PRELOAD_PROBE = """
import sys
from fabric_testing import preload_in_fork_server, run_processes
from probe import imported

preload_in_fork_server("xml.dom.minidom", "no_such_module_anywhere")
print(run_processes(imported, "xml.dom.minidom", world_size=1, init_process_group=False))
try:
    preload_in_fork_server("json")
except RuntimeError as err:
    print("RuntimeError:", err)
"""


def test_the_fork_server_imports_what_is_preloaded_once_for_every_process(tmp_path: Path) -> None:
    """In a fresh interpreter (this one's fork server may run already): the processes find the module imported, a
    module that is not installed is left out, and asking after the server started is an error."""
    (tmp_path / "probe.py").write_text(
        "import sys\n\ndef imported(rank, world_size, name):\n    return name in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", PRELOAD_PROBE], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "[True]", done.stdout
    assert lines[1].startswith("RuntimeError: the fork server already runs"), done.stdout


def test_without_preloading_the_processes_import_only_what_they_use_besides_torch() -> None:
    # torch._dynamo is preloaded always: torch imports it in every process that builds an optimizer
    found = run_processes(imported, "xml.dom.minidom", "torch._dynamo", world_size=1, init_process_group=False)
    assert found == [[False, True]]
    with pytest.raises(RuntimeError, match="call preload_in_fork_server"):
        preload_in_fork_server("xml.dom.minidom")


def imported(rank: int, world_size: int, *names: str) -> list[bool]:
    return [name in sys.modules for name in names]
