from __future__ import annotations

import os
import signal
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import pytest

from fabric_environments import SLURMEnvironment
from fabric_utils import FabricWarning

_SRUN_VARIABLES = {
    "SLURM_NTASKS": "8",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_NNODES": "2",
    "SLURM_NTASKS_PER_NODE": "4",
    "SLURM_JOB_ID": "1234567",
    "SLURM_JOB_NAME": "train.py",
    "SLURM_NODELIST": "node[01-03,7],gpu5",
}


@pytest.fixture
def srun_env(monkeypatch: pytest.MonkeyPatch) -> SLURMEnvironment:
    for name, value in _SRUN_VARIABLES.items():
        monkeypatch.setenv(name, value)
    return SLURMEnvironment()


def test_values_come_from_slurm_variables(srun_env: SLURMEnvironment) -> None:
    assert SLURMEnvironment.detect()
    assert srun_env.creates_processes_externally
    assert (srun_env.world_size(), srun_env.global_rank(), srun_env.local_rank(), srun_env.node_rank()) == (8, 5, 1, 1)
    assert SLURMEnvironment.job_id() == 1234567
    assert SLURMEnvironment.job_name() == "train.py"


def test_main_address_is_the_first_host_of_the_node_list(
    srun_env: SLURMEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert srun_env.main_address == "node01"
    monkeypatch.delenv("SLURM_NODELIST")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[12-13]")
    assert srun_env.main_address == "gpu12"
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    assert srun_env.main_address == "10.0.0.1"
    monkeypatch.delenv("MASTER_ADDR")
    monkeypatch.delenv("SLURM_JOB_NODELIST")
    assert srun_env.main_address == "127.0.0.1"
    assert "MASTER_ADDR" not in os.environ


def test_main_port_derives_from_the_job_id(srun_env: SLURMEnvironment, monkeypatch: pytest.MonkeyPatch) -> None:
    assert srun_env.main_port == 15000 + 4567
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert srun_env.main_port == 15042
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert srun_env.main_port == 29500
    monkeypatch.delenv("MASTER_PORT")
    monkeypatch.delenv("SLURM_JOB_ID")
    assert srun_env.main_port == 12910
    monkeypatch.setenv("SLURM_JOB_ID", "12ab")
    with pytest.raises(ValueError, match="SLURM_JOB_ID='12ab'"):
        srun_env.main_port  # noqa: B018
    assert "MASTER_PORT" not in os.environ


def test_expand_hostlist_is_exposed() -> None:
    assert SLURMEnvironment.expand_hostlist("node[01-03,7],gpu5") == ["node01", "node02", "node03", "node7", "gpu5"]
    assert SLURMEnvironment.resolve_root_node_address("gpu5,node[01-03]") == "gpu5"
    with pytest.raises(ValueError, match="names no host"):
        SLURMEnvironment.resolve_root_node_address(" ")


@pytest.mark.parametrize("job_name", ["bash", "interactive"])
def test_interactive_jobs_are_not_srun_launched(
    srun_env: SLURMEnvironment, monkeypatch: pytest.MonkeyPatch, job_name: str
) -> None:
    monkeypatch.setenv("SLURM_JOB_NAME", job_name)
    assert SLURMEnvironment.is_interactive()
    assert not SLURMEnvironment.detect()
    assert SLURMEnvironment.job_id() is None
    srun_env.validate_settings(num_devices=1, num_nodes=1)  # fabric launches the processes itself: nothing to check


def test_not_detected_outside_slurm() -> None:
    assert not SLURMEnvironment.detect()
    assert SLURMEnvironment.job_id() is None


def test_validate_settings_accepts_a_matching_request(srun_env: SLURMEnvironment) -> None:
    srun_env.validate_settings(num_devices=4, num_nodes=2)


def test_validate_settings_ntasks_per_node_vs_devices(srun_env: SLURMEnvironment) -> None:
    with pytest.raises(ValueError) as info:
        srun_env.validate_settings(num_devices=2, num_nodes=2)
    message = str(info.value)
    assert "devices=2" in message
    assert "--ntasks-per-node=4" in message
    assert "HINT: set devices=4" in message


def test_validate_settings_uneven_tasks_per_node(srun_env: SLURMEnvironment, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4,2")
    with pytest.raises(ValueError, match=r"--ntasks-per-node=4,2"):
        srun_env.validate_settings(num_devices=4, num_nodes=2)


def test_validate_settings_nodes(srun_env: SLURMEnvironment) -> None:
    with pytest.raises(ValueError, match=r"num_nodes=1.*--nodes=2.*HINT: set num_nodes=2"):
        srun_env.validate_settings(num_devices=4, num_nodes=1)


def test_validate_settings_total_tasks(srun_env: SLURMEnvironment, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE")
    monkeypatch.delenv("SLURM_NNODES")
    with pytest.raises(ValueError, match=r"3 \* 2 = 6 processes.*started 8.*--ntasks-per-node=3"):
        srun_env.validate_settings(num_devices=3, num_nodes=2)


def test_setters_are_ignored(srun_env: SLURMEnvironment) -> None:
    with pytest.warns(FabricWarning, match="was ignored"):
        srun_env.set_world_size(2)
    srun_env.set_global_rank(5)
    assert (srun_env.world_size(), srun_env.global_rank()) == (8, 5)


def test_missing_rank_variable_raises_naming_it(srun_env: SLURMEnvironment, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_LOCALID")
    with pytest.raises(ValueError, match="SLURM_LOCALID"):
        srun_env.local_rank()


# ---------------------------------------------------------------------------------------------- auto-requeue


@pytest.fixture
def fake_scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``scontrol`` on PATH that records its arguments in a file (the path returned) and exits 0."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "scontrol-calls.txt"
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{record}"\nexit 0\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return record


def _send_and_wait(signum: int, until: Callable[[], bool], timeout: float = 10.0) -> None:
    """Send ``signum`` to this process and wait until the handler's effect ``until()`` shows."""
    os.kill(os.getpid(), signum)
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing happened within {timeout} s of signal {signum}")
        time.sleep(0.01)


def _signal_self_and_sleep(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(5)  # a handler that raises does so into this frame long before the sleep ends
    raise AssertionError(f"the handler of signal {signum} did not raise")


def test_auto_requeue_on_sigusr1(
    srun_env: SLURMEnvironment, fake_scontrol: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_PROCID", "0")
    original = signal.getsignal(signal.SIGUSR1)
    saved: list[str] = []
    srun_env.enable_auto_requeue(before_requeue=lambda: saved.append("checkpoint"))
    try:
        assert signal.getsignal(signal.SIGUSR1) != original
        assert not srun_env.requeue_requested
        _send_and_wait(signal.SIGUSR1, until=fake_scontrol.exists)
        assert fake_scontrol.read_text().split() == ["requeue", "1234567"]
        assert saved == ["checkpoint"]
        assert srun_env.requeue_requested
    finally:
        srun_env.teardown()
    assert signal.getsignal(signal.SIGUSR1) == original


def test_auto_requeue_of_an_array_job_task(
    srun_env: SLURMEnvironment, fake_scontrol: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "900")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    srun_env.enable_auto_requeue()
    try:
        _send_and_wait(signal.SIGUSR1, until=fake_scontrol.exists)
    finally:
        srun_env.disable_auto_requeue()
    assert fake_scontrol.read_text().split() == ["requeue", "900_3"]


def test_only_global_rank_zero_requeues(srun_env: SLURMEnvironment, fake_scontrol: Path) -> None:
    called = threading.Event()
    srun_env.enable_auto_requeue(before_requeue=called.set)  # global rank 5 here
    try:
        _send_and_wait(signal.SIGUSR1, until=called.is_set)
    finally:
        srun_env.teardown()
    assert srun_env.requeue_requested
    assert not fake_scontrol.exists()


def test_a_custom_signal_and_the_previous_handler(srun_env: SLURMEnvironment, fake_scontrol: Path) -> None:
    received: list[int] = []

    def previous(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    original = signal.signal(signal.SIGUSR2, previous)
    try:
        env = SLURMEnvironment(requeue_signal=signal.SIGUSR2)
        assert env.requeue_signal == signal.SIGUSR2
        env.enable_auto_requeue()
        env.enable_auto_requeue()  # a second call keeps the handler that was there first
        _send_and_wait(signal.SIGUSR2, until=lambda: bool(received))
        assert received == [signal.SIGUSR2]  # the previous handler is chained exactly once
        assert env.requeue_requested
        assert not fake_scontrol.exists()  # SLURM_PROCID=5: not rank zero
        env.disable_auto_requeue()
        assert signal.getsignal(signal.SIGUSR2) is previous
    finally:
        signal.signal(signal.SIGUSR2, original)


def test_requeue_still_runs_when_before_requeue_fails(
    srun_env: SLURMEnvironment, fake_scontrol: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_PROCID", "0")

    def broken() -> None:
        raise OSError("disk full")

    srun_env.enable_auto_requeue(before_requeue=broken)
    try:
        with pytest.raises(OSError, match="disk full"):
            _signal_self_and_sleep(signal.SIGUSR1)
    finally:
        srun_env.teardown()
    assert fake_scontrol.read_text().split() == ["requeue", "1234567"]


def test_enable_auto_requeue_needs_the_main_thread(srun_env: SLURMEnvironment) -> None:
    errors: list[BaseException] = []

    def install() -> None:
        try:
            srun_env.enable_auto_requeue()
        except RuntimeError as err:
            errors.append(err)

    thread = threading.Thread(target=install)
    thread.start()
    thread.join()
    assert len(errors) == 1
    assert "main thread" in str(errors[0])


def test_requeue_reports_a_failing_scontrol(
    srun_env: SLURMEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text('#!/bin/sh\necho "Invalid job id specified" >&2\nexit 1\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.warns(FabricWarning, match=r"Requeueing Slurm job 1234567 failed.*exited with 1.*Invalid job id"):
        assert srun_env.requeue() is False


def test_requeue_without_scontrol_or_job_id(
    srun_env: SLURMEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol there
    with pytest.warns(FabricWarning, match="Requeueing Slurm job 1234567 failed"):
        assert srun_env.requeue() is False
    monkeypatch.delenv("SLURM_JOB_ID")
    with pytest.warns(FabricWarning, match="SLURM_JOB_ID is not set"):
        assert srun_env.requeue() is False


def test_requeue_succeeds_with_scontrol(srun_env: SLURMEnvironment, fake_scontrol: Path) -> None:
    assert srun_env.requeue() is True
    assert fake_scontrol.read_text().split() == ["requeue", "1234567"]


def test_preemption_signals_are_the_requeue_signal_in_a_srun_task(
    srun_env: SLURMEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert srun_env.preemption_signals() == (signal.SIGUSR1,)
    assert SLURMEnvironment(requeue_signal=signal.SIGUSR2).preemption_signals() == (signal.SIGUSR2,)
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # an interactive allocation: fabric starts the processes
    assert srun_env.preemption_signals() == ()
