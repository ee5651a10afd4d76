"""A rank that fails mid-training stops the whole run, quickly, visibly and completely.

Two CPU processes train with DDP; one of them raises, is SIGKILLed, or stops answering (it sleeps while the other
waits in the gradient all-reduce). This runs under each way of starting processes: the ``ddp`` launcher (the
script is run again for rank 1), ``ddp_spawn`` (``fabric.launch(fn)`` in spawned processes) and ``fabric run``
(torch's elastic launcher). Every time, the command must exit with a non-zero code, name the failing rank and show
its traceback (or the signal that killed it), and leave no process behind: every process of the run has ended
within 10 seconds of the failure (for a stuck rank: of the configured collective timeout expiring).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

FAILURE_MESSAGE = "injected failure for the integration test"
FAIL_STEP = 3
STOP_WITHIN = 10.0
COLLECTIVE_TIMEOUT = 4.0

LAUNCHERS = {
    # name -> (script mode, script arguments, `fabric run` options or None)
    "ddp": ("launch", ["--strategy", "ddp", "--devices", "2"], None),
    "ddp_spawn": ("spawn", ["--strategy", "ddp_spawn", "--devices", "2"], None),
    "fabric_run": ("run", [], ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]),
}


def start(helpers: Any, workdir: Path, launcher: str, *extra: str, fabric_run_options: list[str] | None = None) -> Any:
    mode, args, run_options = LAUNCHERS[launcher]
    if fabric_run_options is not None:
        run_options = fabric_run_options
    command = helpers.train_command(
        mode, *args, "--steps", "8", "--pid-dir", str(workdir / "pids"), *extra, fabric_run=run_options
    )
    return helpers.run_command(command, workdir, timeout=180, pid_dir=workdir / "pids", settle=STOP_WITHIN + 5)


def failure_time(workdir: Path) -> float:
    return float((workdir / "pids" / "fail-time").read_text())


def names_failing_rank(output: str, rank: int, error: str = re.escape(FAILURE_MESSAGE)) -> bool:
    """Whether the output says that ``rank`` failed: a launcher's report naming it, or its own traceback lines
    carrying torch's ``[rankN]:`` prefix next to its error (the regular expression ``error``)."""
    rank_word = rf"(?:local[ _]rank|\brank)\W{{0,3}}{rank}\b"
    verbs = r"(?:fail|exit|signal|raised|traceback of)"
    report = re.compile(rf"(?i){rank_word}.*{verbs}|{verbs}.*{rank_word}")
    own_traceback = re.compile(rf"\[rank{rank}\]:.*{error}")
    return any(report.search(line) or own_traceback.search(line) for line in output.splitlines())


def check_stopped(helpers: Any, result: Any, workdir: Path, deadline: float) -> None:
    ranks = helpers.recorded_ranks(workdir / "pids")
    assert sorted(rank for rank, _ in ranks.values()) == [0, 1], result.describe()
    assert result.returncode != 0, result.describe()
    assert not result.leftovers, f"processes left running: {result.leftovers}\n{result.describe()}"
    assert result.ended <= deadline, (
        f"the run ended {result.ended - deadline:.1f}s after the deadline (failure + allowed time)\n{result.describe()}"
    )


CASES = [
    pytest.param("ddp", 1, "raise", id="ddp-rank1-raises"),
    pytest.param("ddp", 0, "raise", id="ddp-rank0-raises"),
    pytest.param("ddp", 1, "sigkill", id="ddp-rank1-sigkilled"),
    pytest.param("ddp", 0, "sigkill", id="ddp-rank0-sigkilled"),
    pytest.param("ddp_spawn", 1, "raise", id="ddp_spawn-rank1-raises"),
    pytest.param("ddp_spawn", 0, "sigkill", id="ddp_spawn-rank0-sigkilled"),
    pytest.param("ddp_spawn", 1, "sigkill", id="ddp_spawn-rank1-sigkilled"),
    pytest.param("fabric_run", 1, "raise", id="fabric_run-rank1-raises"),
    pytest.param("fabric_run", 1, "sigkill", id="fabric_run-rank1-sigkilled"),
]


@pytest.mark.parametrize(("launcher", "rank", "kind"), CASES)
def test_failing_rank_stops_every_process(helpers: Any, workdir: Path, launcher: str, rank: int, kind: str) -> None:
    result = start(helpers, workdir, launcher, "--fail", f"{rank}:{FAIL_STEP}:{kind}")
    check_stopped(helpers, result, workdir, failure_time(workdir) + STOP_WITHIN)
    assert "finished 8 steps" not in result.output, result.describe()
    if kind == "raise":
        assert "Traceback (most recent call last)" in result.output, result.describe()
        assert f"RuntimeError: {FAILURE_MESSAGE}" in result.output, result.describe()
        assert names_failing_rank(result.output, rank), f"rank {rank} is not named as failing\n{result.describe()}"
    elif launcher == "ddp" and rank == 0:
        # the process of rank 0 is the launcher itself: the run's own exit status (killed by SIGKILL) is the report,
        # and the kernel stops rank 1 with it
        assert result.returncode == -9, result.describe()
    else:
        shown = re.search(r"SIGKILL|signal 9\b|exit ?code:? -9\b|exitcode\s*:\s*-9\b", result.output)
        assert shown, result.describe()
        assert names_failing_rank(result.output, rank), f"rank {rank} is not named as failing\n{result.describe()}"


@pytest.mark.parametrize("launcher", ["ddp", "fabric_run"])
@pytest.mark.parametrize("rank", [0, 1])
def test_rank_that_calls_sys_exit_mid_training_stops_the_run(
    helpers: Any, workdir: Path, launcher: str, rank: int
) -> None:
    """``sys.exit(3)`` raises no exception (no exception hook runs): the process leaves its script, its exit handlers
    tear down its process group and it ends. The run must end with a non-zero status within the usual time, leave
    nothing behind and name the rank that exited, not the one left waiting.

    Under the ``ddp`` launcher rank 0 is the launcher and waits at exit for rank 1: rank 1 fails at once only if the
    teardown really closed rank 0's gloo connections (no stale reference to the destroyed group; see
    ``fabric_strategies.teardown``), instead of waiting in its gradient all-reduce for the collective timeout.
    """
    result = start(helpers, workdir, launcher, "--fail", f"{rank}:{FAIL_STEP}:exit")
    check_stopped(helpers, result, workdir, failure_time(workdir) + STOP_WITHIN)
    assert "finished 8 steps" not in result.output, result.describe()
    if launcher == "ddp" and rank == 0:
        assert "after this process (local rank 0) had left the script" in result.output, result.describe()
        assert "failed first" not in result.output, result.describe()
    elif launcher == "ddp":
        # rank 1's exit makes rank 0 fail in the all-reduce, and rank 1 is named
        report = r"local rank 1 failed first: it exited with exit code 3\b"
        assert re.search(report, result.output), result.describe()
    else:
        assert re.search(r"exit(?:code| code|ed with (?:exit )?code)\W{0,3}3\b", result.output), result.describe()


@pytest.mark.parametrize("launcher", ["ddp", "ddp_spawn", "fabric_run"])
def test_rank_stuck_in_collective_is_stopped_by_the_timeout(helpers: Any, workdir: Path, launcher: str) -> None:
    """Rank 1 stops answering before the gradient all-reduce of a step; rank 0 waits in it until the strategy's
    ``timeout`` expires, fails with an error that says it timed out, and the launcher stops rank 1."""
    options = ["--accelerator", "cpu", "--devices", "2"] if launcher == "fabric_run" else None
    strategy = "ddp_spawn" if launcher == "ddp_spawn" else "ddp"
    result = start(
        helpers,
        workdir,
        launcher,
        "--fail",
        f"1:{FAIL_STEP}:hang",
        "--strategy",
        strategy,
        "--timeout",
        str(COLLECTIVE_TIMEOUT),
        fabric_run_options=options,
    )
    check_stopped(helpers, result, workdir, failure_time(workdir) + COLLECTIVE_TIMEOUT + STOP_WITHIN)
    timed_out = r"[Tt]imed? ?[Oo]ut"
    assert re.search(timed_out, result.output), f"no error says that the collective timed out\n{result.describe()}"
    assert names_failing_rank(result.output, 0, timed_out), f"rank 0's timeout is not shown\n{result.describe()}"
