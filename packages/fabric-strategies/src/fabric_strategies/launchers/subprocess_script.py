"""``SubprocessScriptLauncher``: run the user's script again, once per extra local process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from typing_extensions import override

from fabric_environments import ClusterEnvironment
from fabric_strategies.launchers.base import Launcher
from fabric_strategies.launchers.child_watch import (
    FAILURE_FD_VARIABLE,
    ChildObserver,
    exit_after_child_failure,
    write_report,
)
from fabric_strategies.launchers.process_control import (
    describe_end,
    is_exiting,
    parent_death_hook,
    shorten,
    stop_processes,
)
from fabric_strategies.teardown import call_at_exit


def process_variables(
    environment: ClusterEnvironment, local_rank: int, num_processes: int, num_nodes: int
) -> dict[str, str]:
    """The environment variables with which the process of ``local_rank`` on this node joins the run."""
    node_rank = environment.node_rank()
    return {
        "MASTER_ADDR": environment.main_address,
        "MASTER_PORT": str(environment.main_port),
        "NODE_RANK": str(node_rank),
        "LOCAL_RANK": str(local_rank),
        "RANK": str(node_rank * num_processes + local_rank),
        "WORLD_SIZE": str(num_processes * num_nodes),
    }


def _interpreter_options(head: list[str], skip_last: int) -> list[str]:
    return head[1 : len(head) - skip_last]


def script_command() -> list[str]:
    """The command line that runs this process's script again: ``python [options] script args`` or ``-m module``.

    Interpreter options (``-W``, ``-X``, ``-O`` ...) are kept when ``sys.argv`` still matches the original command.
    Raises ``RuntimeError`` where there is no script to run again (``python -c``, the REPL, a notebook).
    """
    args = sys.argv[1:]
    original = list(getattr(sys, "orig_argv", []))
    tail_matches = len(original) > len(args) and original[len(original) - len(args) :] == args
    head = original[: len(original) - len(args)] if tail_matches else []
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        module = spec.name.removesuffix(".__main__")
        options = _interpreter_options(head, 2) if head[-2:-1] == ["-m"] else []
        return [sys.executable, *options, "-m", module, *args]
    script = sys.argv[0] if sys.argv else ""
    if not script or script == "-c" or not os.path.isfile(script):
        raise RuntimeError(
            f"Cannot start the other processes by running the script again: this process runs {script or 'no script'!r}"
            " (the REPL, `python -c` or a notebook). Use strategy='ddp_spawn' or 'ddp_notebook', or start the"
            " processes with `fabric run` / torchrun."
        )
    options = _interpreter_options(head, 1) if head else []
    return [sys.executable, *options, os.path.abspath(script), *args]


class SubprocessScriptLauncher(Launcher):
    """Starts local ranks 1..N-1 by running this process's script (or ``-m`` module) again; this process is rank 0.

    Each child gets ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``NODE_RANK``, ``LOCAL_RANK`` and ``RANK``. A
    thread watches the children (see ``child_watch``): when one fails (raises, or ends badly), the others are
    stopped and this process exits with code 1 after naming the failing rank (it may be blocked in a collective with
    the dead one). When this process fails with an uncaught exception, the children are stopped at exit (SIGTERM,
    SIGKILL after a few seconds); if a child had raised or died before, that child is named as the first failure
    (the exception here is then usually its consequence, e.g. "Connection closed by peer"). Children are killed by
    the kernel if this process dies (Linux), and at a normal exit this process waits for them, so none is left
    behind. Nothing is started when the cluster environment creates the processes itself. A child reports an
    uncaught exception to this process once it joined the process group (``child_watch.report_failures_to_parent``).
    A child that leaves with ``sys.exit(N)`` reports nothing but is named when it ends within ``_EXIT_GRACE`` of the
    failure it caused here. When this process leaves its script while children still run, it says so after
    ``_QUIET_WAIT`` seconds (its process group is torn down by then, so a child blocked in a collective with it fails
    at once; one still working ends when it ends).
    ``on_child_failure(rank, code)`` replaces the default report-and-exit.
    """

    def __init__(
        self,
        cluster_environment: ClusterEnvironment,
        num_processes: int,
        num_nodes: int,
        *,
        on_child_failure: Callable[[int, int], None] | None = None,
    ) -> None:
        for name, value in (("num_processes", num_processes), ("num_nodes", num_nodes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.cluster_environment = cluster_environment
        self.num_processes = num_processes
        self.num_nodes = num_nodes
        self.on_child_failure = self._exit_after_child_failure if on_child_failure is None else on_child_failure
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.observer: ChildObserver | None = None
        self._main_failed = False
        self._main_raised = False  # an uncaught exception reached the top of this process
        self._main_ended = False  # this process reached its exit handlers without an uncaught exception
        self._main_error = ""
        self._failed_before_main: list[int] = []  # children that raised or died before this process's exception

    @property
    @override
    def is_interactive_compatible(self) -> bool:
        return False

    @property
    @override
    def reruns_script(self) -> bool:
        return True

    @override
    def launch(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self.cluster_environment.creates_processes_externally:
            self._start_children()
        return function(*args, **kwargs)

    def _start_children(self) -> None:
        if self.procs:
            raise RuntimeError("This launcher already started its processes; `launch` can run once per process.")
        os.environ.update(process_variables(self.cluster_environment, 0, self.num_processes, self.num_nodes))
        if self.num_processes == 1:
            return
        command = script_command()
        hook = parent_death_hook(os.getpid())
        reports, report_writer = os.pipe()
        try:
            for local_rank in range(1, self.num_processes):
                variables = process_variables(self.cluster_environment, local_rank, self.num_processes, self.num_nodes)
                variables[FAILURE_FD_VARIABLE] = str(report_writer)
                self.procs[local_rank] = subprocess.Popen(
                    command,
                    env={**os.environ, **variables},
                    cwd=os.getcwd(),
                    preexec_fn=hook,
                    pass_fds=(report_writer,),
                )
        finally:
            os.close(report_writer)
        self.observer = ChildObserver(self.procs, self.on_child_failure, reports=reports)
        self.observer.start()
        self._watch_main_failure()
        call_at_exit(self.finish)  # after the exit teardown, which is registered later: children fail fast then

    def _watch_main_failure(self) -> None:
        original = sys.excepthook

        def hook(*exc_info: Any) -> None:
            self._on_main_failure(exc_info[1])
            original(*exc_info)

        sys.excepthook = hook

    def _on_main_failure(self, error: BaseException | None) -> None:
        """This process is failing: claim the report, unless the observer reports a child's failure already (then
        ``finish`` waits for the observer, which ends this process)."""
        self._main_raised = True
        if self.observer is not None and not self.observer.claim():
            return
        self._main_failed = True
        self._main_error = _one_line(error)
        # a child's report, or its death, came before this exception (and usually caused it)
        self._failed_before_main = [] if self.observer is None else self.observer.take_reports()
        for rank, proc in self.procs.items():
            code = proc.poll()
            if (code is not None and code != 0) or (code is None and is_exiting(proc.pid)):
                self._failed_before_main += [] if rank in self._failed_before_main else [rank]
        if not self._failed_before_main:
            # a peer that closed its connections has left its script: on a busy machine it can take seconds to end
            lost_peer = any(sign in str(error) for sign in _PEER_LEFT)
            self._failed_before_main = self._children_ending_badly(_PEER_LEFT_GRACE if lost_peer else _EXIT_GRACE)

    def _children_ending_badly(self, grace: float) -> list[int]:
        """Children that end with a non-zero status within ``grace`` seconds, without having been stopped.

        A child that leaves its script with ``sys.exit(3)`` raises nothing, so it sends no report: its exit handlers
        tear its process group down first (which is what makes this process fail with "Connection closed by peer")
        and only then does it end. While this process fails first instead, the children stay blocked in their
        collective with it and the wait costs ``grace`` seconds.
        """
        deadline = time.monotonic() + grace
        while True:
            ended = [rank for rank, proc in self.procs.items() if proc.poll() not in (None, 0)]
            running = [proc for proc in self.procs.values() if proc.returncode is None]
            if ended or not running or time.monotonic() >= deadline:
                return ended
            time.sleep(0.02)

    def finish(self) -> None:
        """Wait for the children (stop them if this process is failing); runs at exit, may be called earlier."""
        observer = self.observer
        if self._main_failed:
            if observer is not None:
                observer.stop()
                observer.join(_REPORT_TIMEOUT)
                observer.close()
            stop_processes(list(self.procs.values()))
            self._report_main_failure()
            return
        self._main_ended = not self._main_raised
        if observer is not None:
            observer.join(_QUIET_WAIT)
            if observer.is_alive() and self._main_ended:
                self._announce_wait()
            observer.join()  # until every child ended, or the observer handled a failure (bounded by then)
            observer.close()
            if observer.failure is not None:
                return
        for proc in self.procs.values():
            proc.wait()
        failed = [(rank, proc.returncode) for rank, proc in self.procs.items() if proc.returncode != 0]
        if failed:
            self.on_child_failure(*failed[0])

    def _announce_wait(self) -> None:
        """Say why this process has not ended yet: its script is over but children still run (more work of their own,
        or a collective with a process group that was not torn down, which then ends at its timeout)."""
        running = [rank for rank, proc in self.procs.items() if proc.poll() is None]
        if running:
            ranks = ", ".join(map(str, running))
            write_report(
                f"This process (local rank 0) has left the script; waiting for local rank {ranks} to end (Ctrl+C"
                " stops every process)."
            )

    def _report_main_failure(self) -> None:
        raised = [] if self.observer is None else self.observer.raised
        # a child seen exiting at that moment may have ended well after all
        failed = [rank for rank in self._failed_before_main if rank in raised or self.procs[rank].returncode != 0]
        if failed:
            rank = failed[0]
            how = self._describe_child_failure(rank, self.procs[rank].returncode)
            message = (
                f"The process of local rank {rank} failed first: it {how} before this process (local rank 0) failed"
                f" ({self._main_error}), which is probably a consequence."
            )
        else:
            message = f"This process (local rank 0) failed first, with {self._main_error} (traceback above)."
        write_report(f"{message} Every other process was stopped.")

    def _describe_child_failure(self, rank: int, code: int | None) -> str:
        raised = self.observer is not None and rank in self.observer.raised
        return "raised an exception (its traceback is above)" if raised else describe_end(code)

    def _exit_after_child_failure(self, local_rank: int, code: int) -> None:
        exit_after_child_failure(
            local_rank,
            code,
            raised=self.observer is not None and local_rank in self.observer.raised,
            after_main_ended=self._main_ended,
        )


def _one_line(error: BaseException | None) -> str:
    return shorten(f"{type(error).__name__}: {error}".splitlines()[0] if error is not None else "an exception")


_REPORT_TIMEOUT = 30.0  # stopping the others takes a few seconds; never wait forever for a report
_QUIET_WAIT = 2.0  # at a normal end, how long to wait for the children before saying so
_EXIT_GRACE = 1.5  # a child that made this process fail by leaving its script ends within this time
# how gloo words an error caused by a peer that tore its process group down, and how long such a peer may take to end
_PEER_LEFT = ("Connection closed by peer", "Connection reset by peer")
_PEER_LEFT_GRACE = 10.0
