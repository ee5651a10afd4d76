"""``MultiprocessingLauncher``: start every local process with ``spawn``, ``fork`` or ``forkserver``."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Literal, Protocol, get_args

import torch
from typing_extensions import override

from fabric_environments import ClusterEnvironment
from fabric_strategies.launchers.base import Launcher
from fabric_strategies.launchers.process_control import die_with_parent, stop_processes
from fabric_strategies.launchers.rank_watch import (
    RankState,
    describe_secondary,
    describe_silent_failure,
    watch,
)
from fabric_strategies.launchers.subprocess_script import process_variables
from fabric_strategies.process_group import AGENT_STORE_VARIABLE, host_store
from fabric_strategies.teardown import destroy_process_group_cleanly
from fabric_utils import apply_to_collection, capture_rng_state, restore_rng_state

StartMethod = Literal["spawn", "fork", "forkserver"]
START_METHODS: tuple[str, ...] = get_args(StartMethod)


class LaunchedStrategy(Protocol):
    """What the launcher needs of the strategy whose processes it starts (``ParallelStrategy`` has it); declared
    here so that this module, which ``ParallelStrategy`` uses, does not import it back."""

    @property
    def cluster_environment(self) -> ClusterEnvironment: ...

    @property
    def num_processes(self) -> int: ...

    @property
    def num_nodes(self) -> int: ...

    def _set_local_rank(self, local_rank: int) -> None: ...


class RemoteTraceback(Exception):  # noqa: N818 - carries a traceback, it is not itself an error
    """The traceback of an exception raised in another process (attached as ``__cause__`` when it is re-raised)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class ProcessFailedError(RuntimeError):
    """A launched process failed in a way that cannot be re-raised as its own exception."""

    def __init__(self, local_rank: int, message: str) -> None:
        super().__init__(f"The process of local rank {local_rank} failed: {message}")
        self.local_rank = local_rank


@dataclass
class GlobalState:
    """What a spawned process does not inherit from its parent: determinism flags and random generators.

    ``torch.use_deterministic_algorithms`` also sets inductor's ``deterministic`` flag, importing ``torch._inductor``
    (about a second of CPU time) to do so; a new process calls it only when its flags differ from the parent's, or
    when the parent had imported inductor's configuration (then its flag is restored too).
    """

    deterministic: bool
    deterministic_warn_only: bool
    cudnn_benchmark: bool
    cudnn_deterministic: bool
    rng: dict[str, Any]
    inductor_deterministic: bool | None = None  # None: the parent never imported torch._inductor.config

    @classmethod
    def capture(cls) -> GlobalState:
        inductor_config = sys.modules.get("torch._inductor.config")
        return cls(
            deterministic=torch.are_deterministic_algorithms_enabled(),
            deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            cudnn_deterministic=torch.backends.cudnn.deterministic,
            rng=capture_rng_state(),
            inductor_deterministic=None if inductor_config is None else bool(inductor_config.deterministic),
        )

    def restore(self) -> None:
        flags = (self.deterministic, self.deterministic_warn_only)
        current = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        if current != flags or self.inductor_deterministic is not None:
            torch.use_deterministic_algorithms(self.deterministic, warn_only=self.deterministic_warn_only)
        if self.inductor_deterministic is not None:
            import torch._inductor.config as inductor_config

            inductor_config.deterministic = self.inductor_deterministic
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        restore_rng_state(self.rng)


def check_fork_allowed() -> None:
    """Raise when this process already initialised CUDA: a forked child cannot use it then."""
    if torch.cuda.is_initialized():
        raise RuntimeError(
            "Cannot start processes with start_method='fork': CUDA was already initialised in this process (by a"
            " tensor on a GPU, or a torch.cuda call that needs the driver) and a forked process cannot use it."
            " Avoid CUDA calls before `launch()`, or use strategy='ddp_spawn' (start_method='spawn') or 'ddp'."
        )


def _to_cpu(result: Any) -> Any:
    return apply_to_collection(result, torch.Tensor, lambda t: t.detach().cpu())


def _pickled_exception(err: BaseException) -> bytes | None:
    try:
        payload = pickle.dumps(err)
        pickle.loads(payload)
    except Exception:
        return None
    return payload


def _process_main(
    local_rank: int,
    conn: Connection,
    strategy: LaunchedStrategy,
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    variables: dict[str, str],
    global_state: GlobalState | None,
    parent_pid: int | None,
) -> None:
    die_with_parent(parent_pid)
    os.environ.update(variables)
    if global_state is not None:
        global_state.restore()
    strategy._set_local_rank(local_rank)
    # what exists now (modules, torch's objects, the unpickled arguments) lives as long as this process: leave it out of
    # the garbage collector's full passes, which then cost milliseconds instead of ~60 ms (teardown runs two)
    gc.freeze()
    failed = False
    try:
        result = function(*args, **kwargs)
        message: tuple[Any, ...] = ("ok", pickle.dumps(_to_cpu(result)) if local_rank == 0 else None)
    except SystemExit as err:
        failed = err.code not in (None, 0)
        message = ("error", None, f"SystemExit: {err.code}", time.monotonic()) if failed else ("ok", None)
    except BaseException as err:
        failed = True
        # the time (one monotonic clock for the whole machine) tells the launcher which process failed first
        message = ("error", _pickled_exception(err), traceback.format_exc(), time.monotonic())
    try:
        conn.send_bytes(pickle.dumps(message))
    except Exception as err:  # e.g. a result that cannot be pickled
        failed = True
        error = ("error", None, f"Could not send the result back: {err!r}", time.monotonic())
        conn.send_bytes(pickle.dumps(error))
    finally:
        conn.close()
        destroy_process_group_cleanly()
    if failed:
        sys.exit(1)


class MultiprocessingLauncher(Launcher):
    """Starts one process per local device with ``multiprocessing`` (``spawn``, ``fork`` or ``forkserver``).

    On one node this process hosts the store (``MASTER_ADDR:MASTER_PORT``) through which they form their process group
    before it starts them, and they connect to it as clients: where the process of rank 0 hosts it, a process that
    asks for it first waits out TCPStore's connection back-off (0.3-1 s). Not with ``fork``: a forked child would
    inherit the store's server.

    This process waits for them (on their pipes and exit sentinels, without polling) and returns what the function
    returned in the process of local rank 0 (tensors moved to the CPU). When a process fails, the others are
    stopped at once (SIGTERM, then SIGKILL after a few seconds: they may be stuck in a collective) and the FIRST
    failure is raised here: the process's own exception, with its traceback attached as the cause, or a
    ``ProcessFailedError`` saying how it ended (e.g. killed by SIGKILL); the other processes' failures, usually
    consequences of the first, are mentioned in a note. Once every process has finished its work, each must exit
    within ``join_timeout`` seconds. ``fork`` is refused once CUDA is initialised in this process. With
    ``spawn``/``forkserver`` the function, its arguments and the strategy must be picklable.
    """

    def __init__(self, strategy: LaunchedStrategy, start_method: StartMethod = "spawn", *, join_timeout: float = 60.0):
        available = mp.get_all_start_methods()
        if start_method not in START_METHODS or start_method not in available:
            choices = ", ".join(m for m in START_METHODS if m in available)
            raise ValueError(f"Unknown or unavailable start_method {start_method!r}. Choose one of: {choices}")
        self._strategy = strategy
        self.start_method: StartMethod = start_method
        self.join_timeout = join_timeout

    @property
    @override
    def is_interactive_compatible(self) -> bool:
        return self.start_method == "fork"

    @override
    def launch(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.start_method == "fork":
            check_fork_allowed()
        strategy = self._strategy
        environment = strategy.cluster_environment
        num_processes, num_nodes = strategy.num_processes, strategy.num_nodes
        context: Any = mp.get_context(self.start_method)
        global_state = None if self.start_method == "fork" else GlobalState.capture()
        # forkserver children are children of the fork server, which exits together with this process
        parent_pid = None if self.start_method == "forkserver" else os.getpid()
        processes: dict[int, Any] = {}
        readers: dict[int, Connection] = {}
        store = host_store(environment) if num_nodes == 1 and self.start_method != "fork" else None
        try:
            for rank in range(num_processes):
                reader, writer = context.Pipe(duplex=False)
                variables = process_variables(environment, rank, num_processes, num_nodes)
                if store is not None:
                    variables[AGENT_STORE_VARIABLE] = "True"
                process = context.Process(
                    target=_process_main,
                    args=(rank, writer, strategy, function, args, kwargs, variables, global_state, parent_pid),
                    name=f"fabric-local-rank-{rank}",
                )
                process.start()
                writer.close()
                processes[rank], readers[rank] = process, reader
            states = self._collect(processes, readers)
        finally:
            for reader in readers.values():
                reader.close()
            stop_processes(list(processes.values()))
            del store  # closes the port once every process has ended
        return self._result(states)

    def _collect(self, processes: dict[int, Any], readers: dict[int, Connection]) -> list[RankState]:
        """Wait until every process ended well, or one failed; then the others are stopped (within a few seconds)."""
        states = [RankState(rank, processes[rank], readers[rank]) for rank in sorted(processes)]
        first = watch(states, self.join_timeout)
        if first is not None:
            self._raise_failure(first, states)
        return states

    def _raise_failure(self, first: RankState, states: list[RankState]) -> None:
        """Raise the first failure: the process's own exception (its traceback as the cause) or a description."""
        others = [line for state in states if state is not first and (line := describe_secondary(state))]
        note = ("Other processes, probably as a consequence: " + "; ".join(others)) if others else ""
        rank = first.rank
        if first.reported_error:
            _, payload, text, _ = first.message  # type: ignore[misc]
            err = _unpickle_exception(payload)
            if err is not None:
                _add_note(err, f"(raised in the process of local rank {rank}, the first to fail)")
                _add_note(err, note)
                raise err from RemoteTraceback(f"\n\nTraceback of local rank {rank}:\n{text}")
            reason = text
        else:
            reason = describe_silent_failure(first, self.join_timeout)
        raise ProcessFailedError(rank, f"{reason}\n{note}" if note else reason)

    @staticmethod
    def _result(states: list[RankState]) -> Any:
        payload = states[0].message[1]  # type: ignore[index]
        return None if payload is None else pickle.loads(payload)


def _unpickle_exception(payload: bytes | None) -> BaseException | None:
    if payload is None:
        return None
    try:
        err = pickle.loads(payload)
    except Exception:  # e.g. its class lives in a module this process cannot import
        return None
    return err if isinstance(err, BaseException) else None


def _add_note(err: BaseException, note: str) -> None:
    add_note = getattr(err, "add_note", None)  # Python >= 3.11
    if note and add_note is not None:
        add_note(note)
