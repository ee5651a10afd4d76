"""Run a function in N real processes that share a real gloo process group, and report every rank's failure."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
import socket
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from typing import Any, Literal

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT = 120.0
# what the fork server imports once for every process it starts (preload_in_fork_server adds to it). torch imports
# torch._dynamo itself on the first optimizer a process builds and in DDP's constructor: 1.5 s of CPU per process
PRELOAD = ["torch", "torch.distributed", "torch._dynamo"]
_server_started = False
# after the first rank fails, how long the others get to finish or report their own error before they are stopped
FAILURE_GRACE = 3.0


class DistributedTestError(AssertionError):
    """One or more ranks failed. The message holds each failing rank's traceback; ``errors`` maps rank -> text."""

    def __init__(self, message: str, errors: dict[int, str] | None = None) -> None:
        super().__init__(message)
        self.errors = dict(errors or {})


def preload_in_fork_server(*modules: str) -> None:
    """Have the fork server of :func:`run_processes` import ``modules`` once, besides torch, when it starts.

    A module that every process of a test suite imports (Hugging Face ``transformers``' model code, ``deepspeed``:
    seconds of CPU each) is then imported once instead of once per process. Call it before the first run with the
    default start method, for example when a test module or ``conftest.py`` is imported; a module that is not
    installed is left out. Raises ``RuntimeError`` once the server runs (its imports are fixed then).
    """
    if _server_started:
        raise RuntimeError(f"the fork server already runs: call preload_in_fork_server{modules} before the first run")
    PRELOAD.extend(module for module in modules if module not in PRELOAD)


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def destroy_process_group_cleanly() -> None:
    """Tear a process group down so the interpreter exits without aborting.

    Wrappers such as DistributedDataParallel keep references to the process group's C++ objects; collecting them
    before destroying the group avoids the "terminate called without an active exception" abort at exit.
    """
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


def _describe(err: BaseException) -> str:
    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return f"{type(err).__name__}: {err}\n{tb}"


def _worker(
    rank: int,
    world_size: int,
    port: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    conn: Connection,
    init_process_group: bool,
    backend: str,
    pg_timeout: float,
    parent_env: dict[str, str],
) -> None:
    # a forkserver child inherits the server's environment, not the caller's: give every start method the caller's
    os.environ.clear()
    os.environ.update(parent_env)
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0 and torch.get_num_threads() != int(threads):
        torch.set_num_threads(int(threads))  # torch read the variable when the fork server imported it
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
            "GROUP_RANK": "0",
            "NODE_RANK": "0",
        }
    )
    try:
        try:
            if init_process_group:
                timeout = timedelta(seconds=pg_timeout)
                dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout)
            result = fn(rank, world_size, *args, **kwargs)
        except BaseException as err:  # report everything, SystemExit and KeyboardInterrupt included
            conn.send_bytes(pickle.dumps(("error", _describe(err))))
            return
        try:
            # plain pickle: tensors travel as bytes, not as shared-memory handles that die with this process
            conn.send_bytes(pickle.dumps(("ok", result)))
        except Exception as err:  # the result cannot be pickled
            conn.send_bytes(
                pickle.dumps(
                    ("error", f"rank {rank} returned {type(result).__name__}, which cannot be sent back: {err}")
                )
            )
    finally:
        conn.close()
        destroy_process_group_cleanly()


def _receive(rank: int, conn: Connection, proc: Any) -> tuple[str, Any] | None:
    """The outcome a rank sent, an error if it died without sending one, or ``None`` while it is still working."""
    if conn.poll():
        try:
            status, payload = pickle.loads(conn.recv_bytes())
            return status, payload
        except EOFError:
            pass  # the process closed its end without sending: it died
        except Exception as err:  # the result could not be unpickled here
            return "error", f"rank {rank}'s result could not be received: {type(err).__name__}: {err}"
    if proc.exitcode is None:
        proc.join(0.5)  # the pipe closes a moment before the exit code is known
    if proc.exitcode is None:
        return None
    return "error", f"the process exited with code {proc.exitcode} without reporting a result or an exception"


def _stop(procs: list[Any]) -> None:
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(2)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def run_processes(
    fn: Callable[..., Any],
    *args: Any,
    world_size: int = 2,
    timeout: float = DEFAULT_TIMEOUT,
    start_method: Literal["spawn", "forkserver", "fork"] = "forkserver",
    init_process_group: bool = True,
    backend: str = "gloo",
    pg_timeout: float = 30.0,
    **kwargs: Any,
) -> list[Any]:
    """Call ``fn(rank, world_size, *args, **kwargs)`` in ``world_size`` fresh processes; return each rank's result.

    Each process sees the variables torchrun would set (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``LOCAL_RANK``,
    ``WORLD_SIZE``, ...). With ``init_process_group=True`` it joins a ``backend`` process group (with a short
    ``pg_timeout``, so a collective waiting for a dead rank does not wait for gloo's 30-minute default) before ``fn``
    runs, and leaves it cleanly afterwards. When a rank fails, the others get a few seconds to finish or report their
    own failure, then every process still running is stopped and ``DistributedTestError`` is raised with each failing
    rank's exception and traceback; the same happens when the whole run exceeds ``timeout`` seconds. Results must be
    picklable. ``fn`` must be importable (defined at module level) unless ``start_method`` is "fork". Every start
    method gives the processes the caller's current environment variables.

    The default, "forkserver", forks each process from a server that has imported torch and torch._dynamo once (the
    first call starts it): a process is ready in a fraction of a second instead of importing them again (about 3 s of
    CPU each).
    :func:`preload_in_fork_server` adds other modules that the processes import.
    "spawn" starts each from a new interpreter, as ``torch.multiprocessing.spawn`` does.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    ctx: Any = mp.get_context(start_method)
    if start_method == "forkserver":
        global _server_started
        ctx.set_forkserver_preload(PRELOAD)  # takes effect when the server starts
        _server_started = True
    port = find_free_port()
    env = dict(os.environ)
    procs: list[Any] = []
    readers: list[Connection] = []
    for rank in range(world_size):
        reader, writer = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_worker,
            args=(rank, world_size, port, fn, args, kwargs, writer, init_process_group, backend, pg_timeout, env),
            name=f"fabric-test-rank-{rank}",
        )
        proc.start()
        writer.close()  # the child holds its own copy; closing ours lets the reader see EOF when the child dies
        procs.append(proc)
        readers.append(reader)
    results: dict[int, Any] = {}
    errors: dict[int, str] = {}
    pending = set(range(world_size))
    deadline = time.monotonic() + timeout
    first_failure = deadline
    timed_out = False
    try:
        while pending:
            limit = min(deadline, first_failure + FAILURE_GRACE)
            remaining = limit - time.monotonic()
            if remaining <= 0:
                timed_out = limit == deadline
                break
            ready = set(wait([readers[r] for r in pending] + [procs[r].sentinel for r in pending], timeout=remaining))
            for rank in sorted(pending):
                if readers[rank] not in ready and procs[rank].sentinel not in ready:
                    continue
                outcome = _receive(rank, readers[rank], procs[rank])
                if outcome is None:
                    continue
                pending.discard(rank)
                status, payload = outcome
                if status == "ok":
                    results[rank] = payload
                else:
                    if not errors:
                        first_failure = time.monotonic()
                    errors[rank] = payload
    finally:
        _stop(procs)
        for reader in readers:
            reader.close()
    if timed_out:
        errors.update({r: f"did not finish within timeout={timeout}s" for r in pending})
        pending.clear()
    if errors:
        raise DistributedTestError(_report(errors, sorted(pending), world_size), errors)
    return [results[r] for r in range(world_size)]


def _report(errors: dict[int, str], stopped: list[int], world_size: int) -> str:
    lines = [f"{len(errors)} of {world_size} rank(s) failed:"]
    lines += [f"--- rank {rank} ---\n{text.rstrip()}" for rank, text in sorted(errors.items())]
    if stopped:
        lines.append(f"rank(s) {stopped} were still running {FAILURE_GRACE}s after the first failure and were stopped")
    return "\n".join(lines)
