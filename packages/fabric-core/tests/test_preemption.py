"""``fabric.preempted``: a real signal to one of two real processes (gloo) stops both at the same step.

The Slurm cluster test of the same API (a time-limited job, requeued and resumed) is in tests-integration.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest

from fabric_core import Fabric
from fabric_environments import SLURMEnvironment
from fabric_strategies import DDPStrategy
from fabric_testing import run_processes


def make_fabric(**kwargs: Any) -> Fabric:
    return Fabric(accelerator="cpu", devices=2, strategy=DDPStrategy(timeout=timedelta(seconds=60)), **kwargs)


def first_preempted_step(fabric: Fabric, signal_rank: int, signum: int, send_at: int = 3, steps: int = 12) -> int:
    """Read ``fabric.preempted`` once per step; ``signal_rank`` signals itself at step ``send_at``."""
    for step in range(1, steps + 1):
        if fabric.global_rank == signal_rank and step == send_at:
            os.kill(os.getpid(), signum)
        if fabric.preempted:
            return step
    return -1


def _signal_on_one_rank(rank: int, world_size: int, check_every: int) -> tuple[int, Any]:
    fabric = make_fabric()
    fabric.watch_preemption("usr2", check_every=check_every)  # before launch: installed when launch() joins
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL
    fabric.launch()
    step = first_preempted_step(fabric, signal_rank=1, signum=signal.SIGUSR2)
    return step, signal.getsignal(signal.SIGUSR1)


@pytest.mark.parametrize(("check_every", "expected"), [(1, 3), (4, 4)])
def test_a_signal_to_one_rank_preempts_every_rank_at_the_same_step(check_every: int, expected: int) -> None:
    results = run_processes(_signal_on_one_rank, check_every, init_process_group=False)
    assert [step for step, _ in results] == [expected, expected]
    # not under Slurm and not asked for: SIGUSR1 keeps its default action
    assert [handler for _, handler in results] == [signal.SIG_DFL, signal.SIG_DFL]


def _under_slurm(rank: int, world_size: int) -> tuple[int, str, bool]:
    os.environ.update(
        SLURM_NTASKS=str(world_size),
        SLURM_PROCID=str(rank),
        SLURM_LOCALID=str(rank),
        SLURM_NODEID="0",
        SLURM_JOB_NAME="train.sh",
        SLURM_JOB_ID="4321",
    )
    fabric = make_fabric(plugins=[SLURMEnvironment()])  # the processes look like torchrun's, which would win
    assert not callable(signal.getsignal(signal.SIGUSR1))  # nothing installed before launch
    fabric.launch()
    handler = signal.getsignal(signal.SIGUSR1)
    return (
        first_preempted_step(fabric, signal_rank=0, signum=signal.SIGUSR1, send_at=5),
        repr(handler),
        callable(handler),
    )


def test_under_slurm_launch_watches_sigusr1() -> None:
    results = run_processes(_under_slurm, init_process_group=False)
    assert [step for step, _, _ in results] == [5, 5]
    assert all(installed and "Preemption" in name for _, name, installed in results)


def _single_process_keeps_the_previous_handler(rank: int, world_size: int) -> list[Any]:
    seen: list[Any] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    fabric = Fabric(accelerator="cpu", devices=1)
    fabric.launch()
    before = fabric.preempted
    fabric.watch_preemption(signal.SIGTERM)  # after launch: installed at once
    os.kill(os.getpid(), signal.SIGTERM)
    return [before, fabric.preempted, fabric.preempted, seen]


def test_one_process_sees_its_signal_and_calls_the_handler_installed_before() -> None:
    result = run_processes(_single_process_keeps_the_previous_handler, world_size=1, init_process_group=False)
    assert result == [[False, True, True, [signal.SIGTERM]]]


@pytest.mark.parametrize(
    ("signals", "check_every", "message"),
    [
        (("USR3",), 1, "Preemption signal 'USR3' is not a signal. Choose a signal by name, e.g. SIGUSR1"),
        ((signal.SIGKILL,), 1, "Preemption signal <Signals.SIGKILL: 9> cannot be caught"),
        ((9999,), 1, "Preemption signal 9999 is not a signal"),
        ((True,), 1, "Preemption signal True is not a signal"),
        (("SIGTERM",), 0, "check_every=0 is invalid: it must be an int >= 1"),
        (("SIGTERM",), 2.5, "check_every=2.5 is invalid"),
    ],
)
def test_bad_watch_preemption_arguments_name_the_value(signals: Any, check_every: Any, message: str) -> None:
    fabric = Fabric(accelerator="cpu", devices=1)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fabric.watch_preemption(*signals, check_every=check_every)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_importing_fabric_installs_no_signal_handler() -> None:
    code = (
        "import signal; before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)};"
        " import fabric_core; after = {s: signal.getsignal(s) for s in before}; assert before == after, after"
    )
    env = {**os.environ, "SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_JOB_NAME": "train.sh"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
