"""``SubprocessScriptLauncher``: run the user's script again, once per extra local process."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from typing_extensions import override

from fabric_environments import ClusterEnvironment
from fabric_strategies.launchers.base import Launcher
from fabric_strategies.launchers.process_control import (
    describe_exit_code,
    parent_death_hook,
    stop_processes,
)


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


class ChildObserver(threading.Thread):
    """Polls the child processes; when one fails, stops the others and calls ``on_failure(local_rank, code)``."""

    def __init__(
        self,
        processes: dict[int, subprocess.Popen[bytes]],
        on_failure: Callable[[int, int], None],
        poll_interval: float = 0.1,
    ) -> None:
        super().__init__(daemon=True, name="fabric-child-observer")
        self.processes = processes
        self.on_failure = on_failure
        self.poll_interval = poll_interval
        self.failure: tuple[int, int] | None = None
        self._stop_event = threading.Event()

    @override
    def run(self) -> None:
        while not self._stop_event.is_set():
            codes = {rank: proc.poll() for rank, proc in self.processes.items()}
            failed = [(rank, code) for rank, code in codes.items() if code not in (None, 0)]
            if failed:
                rank, code = failed[0]
                self.failure = (rank, int(code))  # type: ignore[arg-type]
                stop_processes(list(self.processes.values()))
                self.on_failure(rank, int(code))  # type: ignore[arg-type]
                return
            if all(code == 0 for code in codes.values()):
                return
            self._stop_event.wait(self.poll_interval)

    def stop(self) -> None:
        self._stop_event.set()


def exit_after_child_failure(local_rank: int, code: int) -> None:
    """Report a failed child and end this process at once with exit code 1 (it may be stuck in a collective)."""
    sys.stderr.write(
        f"\n[fabric] The process of local rank {local_rank} failed ({describe_exit_code(code)}); its error is shown"
        " above. Every other process of the run was stopped.\n"
    )
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            continue
    os._exit(1)


class SubprocessScriptLauncher(Launcher):
    """Starts local ranks 1..N-1 by running this process's script (or ``-m`` module) again; this process is rank 0.

    Each child gets ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``NODE_RANK``, ``LOCAL_RANK`` and ``RANK``. A
    thread watches the children: when one fails, the others are stopped and this process exits with code 1 after
    the failing rank's error. Children are killed by the kernel if this process dies (Linux), and at exit this
    process waits for them (or stops them, if it is exiting because of an exception), so none is left behind.
    Nothing is started when the cluster environment creates the processes itself.
    """

    def __init__(
        self,
        cluster_environment: ClusterEnvironment,
        num_processes: int,
        num_nodes: int,
        *,
        on_child_failure: Callable[[int, int], None] = exit_after_child_failure,
    ) -> None:
        for name, value in (("num_processes", num_processes), ("num_nodes", num_nodes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.cluster_environment = cluster_environment
        self.num_processes = num_processes
        self.num_nodes = num_nodes
        self.on_child_failure = on_child_failure
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.observer: ChildObserver | None = None
        self._main_failed = False

    @property
    @override
    def is_interactive_compatible(self) -> bool:
        return False

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
        for local_rank in range(1, self.num_processes):
            variables = process_variables(self.cluster_environment, local_rank, self.num_processes, self.num_nodes)
            self.procs[local_rank] = subprocess.Popen(
                command, env={**os.environ, **variables}, cwd=os.getcwd(), preexec_fn=hook
            )
        self.observer = ChildObserver(self.procs, self.on_child_failure)
        self.observer.start()
        self._watch_main_failure()
        atexit.register(self.finish)

    def _watch_main_failure(self) -> None:
        original = sys.excepthook

        def hook(*exc_info: Any) -> None:
            self._main_failed = True
            original(*exc_info)

        sys.excepthook = hook

    def finish(self) -> None:
        """Wait for the children (stop them if this process is failing); runs at exit, may be called earlier."""
        if self._main_failed:
            if self.observer is not None:
                self.observer.stop()
            stop_processes(list(self.procs.values()))
            return
        for proc in self.procs.values():
            proc.wait()
        if self.observer is not None:
            self.observer.join()
            if self.observer.failure is not None:
                return
        failed = [(rank, proc.returncode) for rank, proc in self.procs.items() if proc.returncode != 0]
        if failed:
            self.on_child_failure(*failed[0])
