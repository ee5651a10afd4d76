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
from typing import Any

import torch.distributed as dist

DEFAULT_TIMEOUT = 120.0


class DistributedTestError(AssertionError):
    """One or more ranks failed; the message holds each failing rank's traceback."""


def find_free_port() -> int:
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


def _worker(
    rank: int,
    world_size: int,
    port: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    queue: Any,
    init_process_group: bool,
    backend: str,
    pg_timeout: float,
) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
            "GROUP_RANK": "0",
        }
    )
    try:
        if init_process_group:
            dist.init_process_group(
                backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=pg_timeout)
            )
        result = fn(rank, world_size, *args, **kwargs)
        try:
            payload = pickle.dumps(result)
        except Exception:
            payload = pickle.dumps(None)
        queue.put((rank, "ok", payload))
    except BaseException as err:  # report everything, including SystemExit, to the parent
        queue.put((rank, "error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
    finally:
        destroy_process_group_cleanly()


def run_processes(
    fn: Callable[..., Any],
    *args: Any,
    world_size: int = 2,
    timeout: float = DEFAULT_TIMEOUT,
    start_method: str = "spawn",
    init_process_group: bool = True,
    backend: str = "gloo",
    pg_timeout: float = 30.0,
    **kwargs: Any,
) -> list[Any]:
    """Call ``fn(rank, world_size, *args, **kwargs)`` in ``world_size`` fresh processes; return each rank's result.

    With ``init_process_group=True`` each process joins a ``backend`` process group (with a short ``pg_timeout``
    so a broken test never waits for gloo's 30-minute default) before ``fn`` runs and leaves it cleanly afterwards.
    If any rank fails or the whole run exceeds ``timeout`` seconds, every process is stopped and
    ``DistributedTestError`` is raised with every failing rank's traceback. ``fn`` must be importable (defined at
    module level) when ``start_method`` is "spawn".
    """
    ctx = mp.get_context(start_method)
    queue = ctx.Queue()
    port = find_free_port()
    procs = [
        ctx.Process(
            target=_worker,
            args=(rank, world_size, port, fn, args, kwargs, queue, init_process_group, backend, pg_timeout),
            name=f"fabric-test-rank-{rank}",
        )
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(results) + len(errors) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(world_size)) - set(results) - set(errors))
                errors.update({r: f"timed out after {timeout}s" for r in missing})
                break
            try:
                rank, status, payload = queue.get(timeout=min(remaining, 0.5))
            except Exception:
                dead = [r for r, p in enumerate(procs) if p.exitcode is not None and r not in results and r not in errors]
                for r in dead:
                    # give the queue a moment: a process can exit right after putting its message
                    time.sleep(0.2)
                    if queue.empty():
                        errors[r] = f"process exited with code {procs[r].exitcode} without reporting"
                continue
            if status == "ok":
                results[rank] = pickle.loads(payload)
            else:
                errors[rank] = payload
            if errors:
                # another rank may be blocked in a collective waiting for the failed one: give it a moment, then stop
                _collect_for(queue, results, errors, seconds=2.0)
                break
    finally:
        for p in procs:
            p.join(timeout=10 if not errors else 1)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        queue.close()
        queue.join_thread()
    if errors:
        report = "\n".join(f"--- rank {r} ---\n{msg}" for r, msg in sorted(errors.items()))
        raise DistributedTestError(f"{len(errors)} of {world_size} rank(s) failed:\n{report}")
    return [results[r] for r in range(world_size)]


def _collect_for(queue: Any, results: dict[int, Any], errors: dict[int, str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            rank, status, payload = queue.get(timeout=0.1)
        except Exception:
            continue
        if status == "ok":
            results[rank] = pickle.loads(payload)
        else:
            errors[rank] = payload
