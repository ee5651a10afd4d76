"""Checks that a test leaves the process as it found it: env vars, threads, child processes, process groups."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import torch.distributed as dist

# Threads that libraries start once and keep for the life of the process; not a leak.
_LONG_LIVED_THREAD_PREFIXES = ("pytest_timeout", "ThreadPoolExecutor", "Dummy-", "asyncio_", "fsspecIO", "IO loop")


def child_pids(pid: int | None = None) -> set[int]:
    """PIDs of the direct children of ``pid`` (this process by default), read from /proc."""
    pid = os.getpid() if pid is None else pid
    children: set[int] = set()
    task_dir = f"/proc/{pid}/task"
    if not os.path.isdir(task_dir):
        return children
    for tid in os.listdir(task_dir):
        try:
            with open(f"{task_dir}/{tid}/children") as f:
                children.update(int(p) for p in f.read().split())
        except OSError:
            continue
    return {p for p in children if _is_alive(p)}


def _is_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class Snapshot:
    env: dict[str, str] = field(default_factory=dict)
    threads: set[int] = field(default_factory=set)
    children: set[int] = field(default_factory=set)

    @classmethod
    def take(cls) -> Snapshot:
        return cls(
            env=dict(os.environ),
            threads={t.ident for t in threading.enumerate() if t.ident is not None},
            children=child_pids(),
        )


def leaked_threads(before: Snapshot, grace: float = 2.0) -> list[threading.Thread]:
    deadline = time.monotonic() + grace
    while True:
        new = [
            t
            for t in threading.enumerate()
            if t.ident not in before.threads and t.is_alive() and not t.name.startswith(_LONG_LIVED_THREAD_PREFIXES)
        ]
        if not new or time.monotonic() > deadline:
            return new
        time.sleep(0.05)


def leaked_children(before: Snapshot, grace: float = 5.0) -> set[int]:
    deadline = time.monotonic() + grace
    while True:
        new = child_pids() - before.children
        if not new or time.monotonic() > deadline:
            return new
        time.sleep(0.05)


def check_and_restore(before: Snapshot) -> list[str]:
    """Return a description of every leak since ``before``; restore the environment and kill leaked children."""
    problems: list[str] = []
    after_env = dict(os.environ)
    added = sorted(set(after_env) - set(before.env))
    removed = sorted(set(before.env) - set(after_env))
    changed = sorted(k for k in set(after_env) & set(before.env) if after_env[k] != before.env[k])
    if added or removed or changed:
        problems.append(f"environment variables leaked: added={added} removed={removed} changed={changed}")
        os.environ.clear()
        os.environ.update(before.env)
    threads = leaked_threads(before)
    if threads:
        problems.append(f"threads leaked: {[t.name for t in threads]}")
    children = leaked_children(before)
    if children:
        problems.append(f"child processes leaked: {sorted(children)}")
        for pid in children:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
    if dist.is_available() and dist.is_initialized():
        problems.append("a torch.distributed process group was left initialised")
        dist.destroy_process_group()
    return problems
