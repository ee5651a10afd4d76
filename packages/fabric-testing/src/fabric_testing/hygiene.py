"""Checks that a test leaves the process as it found it: env vars, threads, child processes, process groups."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field

import torch.distributed as dist

# Threads that libraries start once and keep for the life of the process; not a leak.
_LONG_LIVED_THREAD_PREFIXES = ("pytest_timeout", "ThreadPoolExecutor", "Dummy-", "asyncio_", "fsspecIO", "IO loop")
# Helper processes started once and kept for the life of the process (multiprocessing's, and the writer process of
# asynchronous saves, closed at exit); not a leak.
_LONG_LIVED_PROCESS_MARKERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver", "fabric_io.writer")

# Variables that are not a test's doing: pytest rewrites PYTEST_CURRENT_TEST in every test, and torch records its
# compiler caches and profiler settings in the environment the first time they are used, for the whole process.
_IGNORED_ENV = frozenset(
    {
        "PYTEST_CURRENT_TEST",
        "DISABLE_CUPTI_LAZY_REINIT",
        "TEARDOWN_CUPTI",
        "KMP_DUPLICATE_LIB_OK",
        "TORCH_WARM_POOL",
        # tensorboardX writes this when it is first imported
        "CRC32C_SW_MODE",
    }
)
_IGNORED_ENV_PREFIXES = ("TORCHINDUCTOR_", "_TORCHINDUCTOR_", "TRITON_")

THREAD_GRACE = 2.0
CHILD_GRACE = 5.0


def _proc_children(pid: int) -> set[int] | None:
    """Children listed by the kernel in /proc/<pid>/task/*/children, or ``None`` where that file does not exist."""
    task_dir = f"/proc/{pid}/task"
    try:
        tids = os.listdir(task_dir)
    except OSError:
        return None
    children: set[int] = set()
    for tid in tids:
        try:
            with open(f"{task_dir}/{tid}/children") as f:
                children.update(int(p) for p in f.read().split())
        except FileNotFoundError:
            return None  # kernel built without CONFIG_PROC_CHILDREN
        except OSError:
            continue  # the thread ended meanwhile
    return children


def _scan_children(pid: int) -> set[int]:
    """Children found by reading every process's parent id from /proc/*/stat (slower fallback)."""
    children: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _read_stat(int(entry))[1] == pid:
            children.add(int(entry))
    return children


def _read_stat(pid: int) -> tuple[str, int]:
    """(state, parent pid) of ``pid``; ("X", -1) when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return "X", -1
    return fields[0], int(fields[1])


def _is_long_lived_helper(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return any(marker in cmdline for marker in _LONG_LIVED_PROCESS_MARKERS)


def child_pids(pid: int | None = None, *, helpers: bool = False) -> set[int]:
    """PIDs of the running (not zombie) direct children of ``pid`` (this process by default), read from /proc.

    Long-lived helper processes (multiprocessing's resource tracker and fork server, fabric_io's checkpoint writer)
    are included only with ``helpers=True``. Returns an empty set on platforms without /proc.
    """
    pid = os.getpid() if pid is None else pid
    if not os.path.isdir("/proc"):
        return set()
    children = _proc_children(pid)
    if children is None:
        children = _scan_children(pid)
    return {p for p in children if _read_stat(p)[0] not in ("Z", "X") and (helpers or not _is_long_lived_helper(p))}


@dataclass
class Snapshot:
    """What a test must leave as it found it."""

    env: dict[str, str] = field(default_factory=dict)
    threads: set[threading.Thread] = field(default_factory=set)
    children: set[int] = field(default_factory=set)

    @classmethod
    def take(cls) -> Snapshot:
        return cls(env=_environment(), threads=set(threading.enumerate()), children=child_pids())


def leaked_threads(before: Snapshot, grace: float = THREAD_GRACE) -> list[threading.Thread]:
    """Threads started since ``before`` that are still alive after up to ``grace`` seconds."""
    deadline = time.monotonic() + grace
    while True:
        new = [
            t
            for t in threading.enumerate()
            if t not in before.threads and t.is_alive() and not t.name.startswith(_LONG_LIVED_THREAD_PREFIXES)
        ]
        if not new or time.monotonic() > deadline:
            return new
        time.sleep(0.05)


def leaked_children(before: Snapshot, grace: float = CHILD_GRACE) -> set[int]:
    """Child processes started since ``before`` that are still running after up to ``grace`` seconds."""
    deadline = time.monotonic() + grace
    while True:
        new = child_pids() - before.children
        if not new or time.monotonic() > deadline:
            return new
        time.sleep(0.05)


def _kill(pids: set[int]) -> None:
    """SIGKILL ``pids`` and wait (up to 5 s) until they stopped running. They are not reaped: the object that started
    them (a ``Popen``, a ``Process``) keeps the right to collect their exit status."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(_read_stat(p)[0] not in ("Z", "X") for p in pids):
        time.sleep(0.02)


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _IGNORED_ENV and not k.startswith(_IGNORED_ENV_PREFIXES)}


def _env_problem(before: dict[str, str]) -> str | None:
    after = _environment()
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(after) & set(before) if after[k] != before[k])
    if not (added or removed or changed):
        return None
    return f"environment variables leaked (use pytest's monkeypatch): added={added} removed={removed} changed={changed}"


def check_and_restore(
    before: Snapshot, *, thread_grace: float | None = None, child_grace: float | None = None
) -> list[str]:
    """Describe every leak since ``before`` and undo what can be undone.

    The environment is restored, leaked child processes are killed and reaped, and a process group left initialised
    is destroyed. Leaked threads cannot be stopped from outside; they are only reported. The graces default to
    ``THREAD_GRACE`` and ``CHILD_GRACE`` as they are when the check runs (a test of the plugin shortens them).
    """
    thread_grace = THREAD_GRACE if thread_grace is None else thread_grace
    child_grace = CHILD_GRACE if child_grace is None else child_grace
    problems: list[str] = []
    env_problem = _env_problem(before.env)
    if env_problem is not None:
        problems.append(env_problem)
        for key in set(_environment()) - set(before.env):
            del os.environ[key]
        os.environ.update(before.env)
    threads = leaked_threads(before, thread_grace)
    if threads:
        problems.append(f"threads leaked: {sorted(t.name for t in threads)}")
    children = leaked_children(before, child_grace)
    if children:
        problems.append(f"child processes leaked (killed now): {sorted(children)}")
        _kill(children)
    if dist.is_available() and dist.is_initialized():
        problems.append("a torch.distributed process group was left initialised (destroyed now)")
        dist.destroy_process_group()
    return problems
