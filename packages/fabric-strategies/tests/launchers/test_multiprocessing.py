"""MultiprocessingLauncher: spawn, fork and forkserver for real; rank 0's result; a child's exception re-raised."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from fabric_strategies import DDPStrategy, MultiprocessingLauncher, ProcessFailedError, RemoteTraceback
from fabric_strategies.launchers.multiprocessing import check_fork_allowed
from fabric_testing import RunIf

CPU2 = [torch.device("cpu")] * 2
TIMEOUT = timedelta(seconds=30)


def _strategy(start_method: str) -> DDPStrategy:
    strategy = DDPStrategy(parallel_devices=CPU2, start_method=start_method, timeout=TIMEOUT)  # type: ignore[arg-type]
    strategy.complete()
    return strategy


def _train(strategy: DDPStrategy) -> dict[str, object]:
    strategy.setup_environment()
    torch.manual_seed(0)
    model = strategy.setup_module(torch.nn.Linear(3, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(strategy.global_rank)
    for _ in range(2):
        strategy.backward(model(torch.randn(4, 3)).sum(), model)
        optimizer.step()
        optimizer.zero_grad()
    weights = strategy.all_gather(model.module.weight.detach())
    return {
        "rank": strategy.global_rank,
        "world_size": strategy.world_size,
        "local_rank": os.environ["LOCAL_RANK"],
        "in_sync": bool(torch.equal(weights[0], weights[1])),
        "weight": model.module.weight.detach(),
    }


def test_spawn_runs_every_rank_and_returns_rank_zeros_result():
    strategy = _strategy("spawn")
    launcher = strategy.launcher
    assert isinstance(launcher, MultiprocessingLauncher)
    result = launcher.launch(_train, strategy)
    assert result["rank"] == 0
    assert result["world_size"] == 2
    assert result["local_rank"] == "0"
    assert result["in_sync"]
    assert isinstance(result["weight"], torch.Tensor)
    assert result["weight"].device.type == "cpu"
    assert not dist.is_initialized()  # nothing happened in this process


def _add(strategy: DDPStrategy, value: int) -> int:
    strategy.setup_environment()
    total = strategy.all_reduce(torch.tensor(value + strategy.global_rank), reduce_op="sum")
    strategy.teardown()
    return int(total)


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_fork_and_forkserver(start_method):
    # Run in a fresh interpreter, as a user script would: forking this long-lived pytest process, which earlier
    # tests filled with library threads (gloo, DeepSpeed), can deadlock the child in a lock a dead thread held.
    import subprocess
    import sys

    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import test_multiprocessing as t; "
        f"s = t._strategy({start_method!r}); "
        f"assert s.launcher.is_interactive_compatible is {start_method == 'fork'}; "
        "print('result', s.launcher.launch(t._add, s, 10))"
    )
    here = os.path.dirname(os.path.abspath(__file__))
    result = subprocess.run([sys.executable, "-c", code, here], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "result 21" in result.stdout


class _UnpicklableError(Exception):
    def __init__(self, handle: object) -> None:
        super().__init__("cannot travel")
        self.handle = handle

    def __reduce__(self):  # type: ignore[no-untyped-def]
        raise TypeError("not picklable")


def _fail(strategy: DDPStrategy, how: str) -> None:
    strategy.setup_environment()
    if strategy.global_rank == 1:
        if how == "raise":
            raise ValueError("boom on rank 1")
        if how == "unpicklable":
            raise _UnpicklableError(object())
        if how == "exit":
            os._exit(3)
        if how == "atexit":
            atexit.register(os._exit, 7)  # finishes its work, then dies at interpreter exit
            return
    if how != "atexit":
        strategy.barrier()  # rank 0 would wait here forever for rank 1: the launcher stops it


def test_a_child_exception_is_raised_again_with_its_traceback():
    strategy = _strategy("spawn")
    with pytest.raises(ValueError, match=r"boom on rank 1") as info:
        strategy.launcher.launch(_fail, strategy, "raise")
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "local rank 1" in str(cause)
    assert "in _fail" in str(cause)


@pytest.mark.parametrize(
    ("how", "start_method", "message"),
    [
        ("unpicklable", "fork", "_UnpicklableError: cannot travel"),
        ("exit", "fork", "exit code 3"),
        ("atexit", "spawn", "exit code 7"),  # atexit handlers run only in spawned interpreters
    ],
)
def test_failures_that_cannot_be_raised_again_are_reported(how, start_method, message):
    strategy = _strategy(start_method)
    with pytest.raises(ProcessFailedError, match=message) as info:
        strategy.launcher.launch(_fail, strategy, how)
    assert info.value.local_rank == 1


def test_unknown_start_method_lists_the_choices():
    with pytest.raises(ValueError, match=r"'thread'.*spawn"):
        MultiprocessingLauncher(_strategy("spawn"), start_method="thread")  # type: ignore[arg-type]


def test_fork_is_allowed_while_cuda_is_untouched():
    if not torch.cuda.is_initialized():
        check_fork_allowed()


@RunIf(min_cuda_gpus=1)
def test_fork_is_refused_once_cuda_is_initialised():
    torch.zeros(1, device="cuda")
    with pytest.raises(RuntimeError, match=r"CUDA was already initialised.*ddp_spawn"):
        _strategy("fork").launcher.launch(_add, None, 0)


def _determinism_flags() -> tuple[bool, bool]:
    return torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()


def _report_determinism(strategy: DDPStrategy) -> tuple[bool, bool]:
    strategy.setup_environment()
    return _determinism_flags()


def test_spawned_processes_get_the_determinism_flags_of_the_parent():
    before = _determinism_flags()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        strategy = _strategy("spawn")
        assert strategy.launcher.launch(_report_determinism, strategy) == (True, True)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_restoring_the_default_determinism_flags_does_not_import_inductor():
    """``torch.use_deterministic_algorithms`` imports ``torch._inductor`` (a second of start-up per process): a spawned
    process calls it only when its flags must change, or when the parent had loaded inductor's configuration."""
    code = (
        "import sys, torch\n"
        "from fabric_strategies.launchers.multiprocessing import GlobalState\n"
        "state = GlobalState.capture()\n"
        "assert state.inductor_deterministic is None, state\n"
        "state.restore()\n"
        "print('torch._inductor' in sys.modules)\n"
        "state.deterministic = True\n"
        "state.restore()\n"
        "print(torch.are_deterministic_algorithms_enabled(), 'torch._inductor' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True"]


def _rendezvous_facts(strategy: DDPStrategy) -> dict[str, object]:
    import gc

    frozen = gc.get_freeze_count()  # before the group forms: what the launcher froze
    strategy.setup_environment()  # returns once every process has connected (it ends with a barrier under gloo)
    return {"agent_store": os.environ.get("TORCHELASTIC_USE_AGENT_STORE"), "frozen": frozen}


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_processes_join_a_store_that_the_launcher_hosts(start_method):
    """The launcher hosts the store before it starts the processes, which connect as clients (no rank waits out
    TCPStore's connection back-off); what exists when the function starts is left out of the GC's full passes."""
    strategy = _strategy(start_method)
    facts = strategy.launcher.launch(_rendezvous_facts, strategy)
    assert facts["agent_store"] == "True"
    assert facts["frozen"] > 10_000  # torch's modules and objects, at least
    assert "TORCHELASTIC_USE_AGENT_STORE" not in os.environ  # only the launched processes get it


def test_an_occupied_main_port_is_reported_before_any_process_starts(monkeypatch):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("MASTER_PORT", str(port))
        strategy = _strategy("spawn")
        with pytest.raises(RuntimeError, match=rf"Cannot start the store of the process group at .*:{port} "):
            strategy.launcher.launch(_add, strategy, 1)
