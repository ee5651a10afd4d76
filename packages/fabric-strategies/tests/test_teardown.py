"""Clean teardown: DDP wrappers release the process group before it is destroyed, also at interpreter exit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from fabric_strategies import destroy_process_group_cleanly, release_ddp_wrapper
from fabric_strategies.teardown import describe_references, track_ddp_wrapper, wait_for_idle_gloo_workers
from fabric_testing import RunIf, run_processes

LOOP_SCRIPT = Path(__file__).with_name("teardown_loop.py")


@pytest.fixture
def single_process_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1, timeout=timedelta(seconds=30))
    yield
    destroy_process_group_cleanly()


@pytest.mark.usefixtures("single_process_group")
def test_release_drops_the_group_references_and_keeps_the_forward_working():
    module = torch.nn.Linear(2, 2)
    wrapper = DistributedDataParallel(module)
    assert set(describe_references(wrapper)) >= {"reducer", "logger", "process_group"}
    release_ddp_wrapper(wrapper)
    assert describe_references(wrapper) == []
    assert torch.equal(wrapper(torch.ones(1, 2)), module(torch.ones(1, 2)))
    with pytest.raises(TypeError, match=r"DistributedDataParallel module, got Linear"):
        release_ddp_wrapper(module)  # type: ignore[arg-type]


@pytest.mark.usefixtures("single_process_group")
def test_gloo_workers_are_seen_idle_after_a_backward():
    wrapper = DistributedDataParallel(torch.nn.Linear(2, 2))
    wrapper(torch.ones(1, 2)).sum().backward()
    assert wait_for_idle_gloo_workers(timeout=10)
    release_ddp_wrapper(wrapper)


@pytest.mark.usefixtures("single_process_group")
def test_destroy_releases_tracked_wrappers_and_is_idempotent():
    wrapper = DistributedDataParallel(torch.nn.Linear(2, 2))
    track_ddp_wrapper(wrapper)
    destroy_process_group_cleanly()
    assert not dist.is_initialized()
    assert describe_references(wrapper) == []
    destroy_process_group_cleanly()


def _tear_down_while_the_peer_waits(rank: int, world_size: int, marker: str) -> tuple[str, float]:
    wrapper = DistributedDataParallel(torch.nn.Linear(2, 2))
    wrapper(torch.ones(1, 2)).sum().backward()
    if rank == 0:
        time.sleep(1.0)  # let the peer block in its all-reduce first
        destroy_process_group_cleanly(wrapper)
        torn_down = time.monotonic()
        # stay alive (an exiting process would close the connections anyway) until the peer reports
        deadline = torn_down + 60
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        return "torn down", torn_down
    try:
        dist.all_reduce(torch.ones(1))  # rank 0 never joins this one
        outcome = "completed"
    except RuntimeError as err:
        outcome = f"failed: {err}"
    failed = time.monotonic()
    Path(marker).write_text(outcome)
    return outcome, failed


def test_a_peer_waiting_in_a_collective_fails_fast_after_a_ddp_group_was_torn_down(tmp_path):
    # the collective timeout is 20 s: a peer still connected to a destroyed group would only fail after it
    (_, torn_down), (outcome, failed) = run_processes(
        _tear_down_while_the_peer_waits, str(tmp_path / "peer_done"), pg_timeout=20.0, timeout=120
    )
    assert outcome.startswith("failed:"), outcome
    assert failed - torn_down < 5.0, outcome


EXIT_SCRIPT = textwrap.dedent(
    """
    import atexit
    import sys
    from datetime import timedelta
    import torch
    import torch.distributed as dist
    from fabric_strategies import DDPStrategy, call_at_exit

    holder = {}

    def report(when):
        print(when, "initialized", dist.is_initialized(), "reducer", hasattr(holder["model"], "reducer"), flush=True)

    # registered before the strategy's exit teardown, so it runs after it
    call_at_exit(report, "after the exit teardown:")
    # the script's own exit handler runs before the exit teardown (whatever the order of registration)
    atexit.register(report, "in the script's exit handler:")
    if sys.argv[1] == "destroy-in-atexit":
        atexit.register(dist.destroy_process_group)  # as plain PyTorch scripts do; it runs before report
    strategy = DDPStrategy(parallel_devices=[torch.device("cpu")], timeout=timedelta(seconds=20))
    strategy.complete()
    strategy.setup_environment()
    holder["model"] = strategy.setup_module(torch.nn.Linear(2, 2))
    holder["model"](torch.ones(1, 2)).sum().backward()
    # no teardown: the user forgot it (or left the process group to an exit handler of the script)
    """
)


def _run_exit_script(tmp_path: Path, ending: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "forgot.py"
    script.write_text(EXIT_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_PORT")}
    return subprocess.run([sys.executable, str(script), ending], capture_output=True, text=True, timeout=120, env=env)


def test_a_forgotten_teardown_happens_at_interpreter_exit_after_the_scripts_exit_handlers(tmp_path):
    proc = _run_exit_script(tmp_path, "forget")
    assert proc.returncode == 0, proc.stderr
    assert "in the script's exit handler: initialized True reducer True" in proc.stdout
    assert "after the exit teardown: initialized False reducer False" in proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr


def test_a_group_destroyed_in_an_exit_handler_of_the_script_is_left_to_it(tmp_path):
    # before the exit teardown ran after the script's exit handlers, destroy_process_group() failed there ("Exception
    # ignored in atexit callback ... AssertionError: Process group cannot be None")
    proc = _run_exit_script(tmp_path, "destroy-in-atexit")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    # the wrapper still reached the destroyed group: the exit teardown released it
    assert "in the script's exit handler: initialized False reducer True" in proc.stdout
    assert "after the exit teardown: initialized False reducer False" in proc.stdout


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="needs Linux scheduling policies")
@pytest.mark.parametrize("mode", ["fabric-atexit", "fabric-user-destroy"])
def test_two_process_runs_exit_cleanly_even_with_starved_gloo_workers(mode):
    # with the gloo workers starved of CPU plain-torch runs can abort at exit (teardown_loop.py --mode raw; how often
    # depends on the machine's timing: most runs where it was written, none of 4 on the 2-core CI machine later);
    # fabric-user-destroy: the script destroys the group itself while a starved worker still holds its last work, and
    # the exit hook then destroys the group for good by releasing the DDP wrapper (issue #20). One run of each mode
    # here (about 12 s of CPU each, both processes pinned to one CPU); test_fifty_two_process_ddp_runs_never_abort
    # is the long count.
    proc = subprocess.run(
        [sys.executable, str(LOOP_SCRIPT), "--runs", "1", "--mode", mode, "--adversarial"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{mode} (adversarial): 1 runs, 0 aborted, 0 other failures" in proc.stdout


@RunIf(standalone=True)
def test_fifty_two_process_ddp_runs_never_abort():
    proc = subprocess.run(
        [sys.executable, str(LOOP_SCRIPT), "--runs", "50", "--mode", "fabric", "--adversarial"],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fabric (adversarial): 50 runs, 0 aborted, 0 other failures" in proc.stdout
