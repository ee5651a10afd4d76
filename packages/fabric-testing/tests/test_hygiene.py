from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import torch.distributed as dist

from fabric_testing import Snapshot, check_and_restore, child_pids


def test_a_clean_test_has_no_problems() -> None:
    assert check_and_restore(Snapshot.take(), thread_grace=0.1, child_grace=0.1) == []


def test_env_leaks_are_reported_and_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABRIC_HYGIENE_EXISTING", "kept")
    monkeypatch.setenv("FABRIC_HYGIENE_CHANGED", "old")
    before = Snapshot.take()
    os.environ["FABRIC_HYGIENE_ADDED"] = "1"
    del os.environ["FABRIC_HYGIENE_EXISTING"]
    os.environ["FABRIC_HYGIENE_CHANGED"] = "new"
    problems = check_and_restore(before, thread_grace=0.1, child_grace=0.1)
    assert problems == [
        "environment variables leaked (use pytest's monkeypatch): added=['FABRIC_HYGIENE_ADDED']"
        " removed=['FABRIC_HYGIENE_EXISTING'] changed=['FABRIC_HYGIENE_CHANGED']"
    ]
    assert "FABRIC_HYGIENE_ADDED" not in os.environ
    assert os.environ["FABRIC_HYGIENE_EXISTING"] == "kept"
    assert os.environ["FABRIC_HYGIENE_CHANGED"] == "old"


def test_variables_torch_and_pytest_manage_are_not_leaks() -> None:
    before = Snapshot.take()
    os.environ["TORCHINDUCTOR_CACHE_DIR_FABRIC_TEST"] = "/tmp/x"
    try:
        assert check_and_restore(before, thread_grace=0.1, child_grace=0.1) == []
    finally:
        del os.environ["TORCHINDUCTOR_CACHE_DIR_FABRIC_TEST"]


def test_leaked_threads_are_reported() -> None:
    stop = threading.Event()
    before = Snapshot.take()
    thread = threading.Thread(target=stop.wait, name="fabric-leaky", daemon=True)
    thread.start()
    try:
        assert check_and_restore(before, thread_grace=0.1, child_grace=0.1) == ["threads leaked: ['fabric-leaky']"]
    finally:
        stop.set()
        thread.join()


def test_threads_that_finish_within_the_grace_period_are_fine() -> None:
    before = Snapshot.take()
    threading.Thread(target=time.sleep, args=(0.2,), name="fabric-short").start()
    assert check_and_restore(before, thread_grace=5.0, child_grace=0.1) == []


def test_leaked_children_are_reported_and_killed() -> None:
    before = Snapshot.take()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert proc.pid in child_pids()
    problems = check_and_restore(before, thread_grace=0.1, child_grace=0.1)
    assert problems == [f"child processes leaked (killed now): [{proc.pid}]"]
    assert proc.wait(timeout=10) == -9
    assert proc.pid not in child_pids()


def test_a_checkpoint_writer_is_a_helper_listed_only_when_asked_for() -> None:
    # the command line of fabric_io's writer process, with a sleep in place of the writer
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # from fabric_io.writer import main"])
    try:
        assert proc.pid not in child_pids()
        assert proc.pid in child_pids(helpers=True)
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_children_that_exit_within_the_grace_period_are_fine() -> None:
    before = Snapshot.take()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    assert check_and_restore(before, thread_grace=0.1, child_grace=30.0) == []
    proc.wait()


def test_children_that_existed_before_are_not_blamed() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert check_and_restore(Snapshot.take(), thread_grace=0.1, child_grace=0.1) == []
    finally:
        proc.kill()
        proc.wait()


def test_an_initialised_process_group_is_reported_and_destroyed() -> None:
    before = Snapshot.take()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    problems = check_and_restore(before, thread_grace=0.1, child_grace=0.1)
    assert problems == ["a torch.distributed process group was left initialised (destroyed now)"]
    assert not dist.is_initialized()


def test_multiprocessing_helpers_are_not_children_to_blame() -> None:
    import multiprocessing as mp

    before = Snapshot.take()
    ctx = mp.get_context("spawn")
    ctx.Lock()  # registers a semaphore: starts multiprocessing's resource tracker (once per process)
    assert check_and_restore(before, thread_grace=0.1, child_grace=0.1) == []


def test_child_pids_of_another_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert child_pids(proc.pid) == set()
        assert proc.pid in child_pids(os.getpid())
    finally:
        proc.kill()
        proc.wait()
