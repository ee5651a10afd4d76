"""A writer process: it runs the write of an asynchronous save, so the write takes no time from training's interpreter.

A background thread that writes a checkpoint (pickling, ``torch.save``'s archive, the page cache, DCP's planning)
holds the interpreter lock for much of it, and training's thread waits for the lock meanwhile. ``WriterProcess``
starts a writer process instead (``python -c`` calling ``main`` here: a fresh interpreter, in which nothing of the
training script is imported or run again) at a lower CPU priority, connected by a Unix socket. The writer imports
from the training process's ``sys.path`` less its first entry (the script's directory): its start and every call
pass it along, so a folder that the script adds to ``sys.path`` while it runs serves the writer too. ``run`` hands it a
call on a copy staged in shared memory (``fabric_io.shared_staging``: a few hundred bytes and a file descriptor for
100 MB) and waits for its outcome, which it raises here if the call failed (``runs_in_writer`` tells which calls it
can run). The process ignores Ctrl-C, so a save in flight is finished rather than cut off, and exits when its socket
closes (the training process is gone or ``close`` was called).

For sharded saves every rank's writer joins a process group of the writers (``join_group``; gloo, through a
``TCPStore`` that global rank 0's training process hosts), so DCP's collectives run among the writers, and DTensors
are rebuilt there on meshes of the same ranks.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.machinery
import io
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import traceback
from datetime import timedelta
from typing import Any

from fabric_io.background import BACKGROUND_NICENESS
from fabric_io.shared_staging import Arena, SharedStaging, dump_call, forget_meshes, load_call, shared_staging_available

WRITER_VARIABLE = "FABRIC_CHECKPOINT_WRITER"
"""``process`` (the default): asynchronous saves write in a writer process; ``thread``: in a thread of the training
process (the only way where the platform has no anonymous shared files)."""
_HEADER = struct.Struct("!Q")
_MAX_FDS = 16


def writer_process_enabled() -> bool:
    """Whether asynchronous saves may write in a writer process (``WRITER_VARIABLE``; Linux only, and only where
    ``sys.executable`` is a Python interpreter: not in a frozen application, where it is the application itself, nor
    in an embedding program that has none)."""
    value = os.environ.get(WRITER_VARIABLE, "process")
    if value not in ("process", "thread"):
        raise ValueError(
            f"{WRITER_VARIABLE}={value!r} is not a checkpoint writer; choose 'process' (the default: a writer process"
            " where the platform allows it) or 'thread' (a thread of the training process)."
        )
    has_interpreter = bool(sys.executable) and not getattr(sys, "frozen", False)
    return value == "process" and shared_staging_available() and has_interpreter


def send_message(connection: socket.socket, message: Any, fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send ``message`` (pickled) and ``fds`` over the Unix socket ``connection``."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    socket.send_fds(connection, [_HEADER.pack(len(payload))], list(fds))
    connection.sendall(payload)


def receive_message(connection: socket.socket) -> tuple[Any, list[int]]:
    """The next message and the file descriptors that came with it; ``EOFError`` once the peer has closed."""
    header, fds, _, _ = socket.recv_fds(connection, _HEADER.size, _MAX_FDS)
    header += _receive_exactly(connection, _HEADER.size - len(header))
    (size,) = _HEADER.unpack(header)
    return pickle.loads(_receive_exactly(connection, size)), fds


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = connection.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError("the peer closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class _ModuleRecorder(pickle.Pickler):
    """Pickles into nothing, recording the module of every class and function that the pickle refers to."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL)
        self.modules: set[str] = set()

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type) or callable(obj):
            self.modules.add(getattr(obj, "__module__", None) or "__main__")
        return NotImplemented


def runs_in_writer(call: Any) -> bool:
    """Whether ``call`` can be handed to a writer process: it pickles, and every class and function it refers to
    comes from a module that the writer imports too (not the training script, nor a module beside it: the writer
    does not have the script's directory on its path)."""
    recorder = _ModuleRecorder()
    try:
        recorder.dump(call)
    except Exception:
        return False
    return all(_importable_by_writer(module) for module in recorder.modules)


def writer_path() -> list[str]:
    """Where the writer imports from: this process's ``sys.path`` now, less its first entry (the script's directory,
    or the current directory) and empty entries (the current directory)."""
    return [path for path in sys.path[1:] if path]


def _importable_by_writer(module: str) -> bool:
    top = module.partition(".")[0]
    if top == "__main__" or top == "__mp_main__":
        return False
    if top in sys.builtin_module_names or top in sys.stdlib_module_names:
        return True
    return importlib.machinery.PathFinder.find_spec(top, writer_path()) is not None


class WriterProcess:
    """The training process's side of one writer process (started here); see the module docstring."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        flags = ["-P"] if sys.version_info >= (3, 11) else []  # no script directory or cwd on sys.path
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, *flags, "-c", f"from fabric_io.writer import main; main({theirs.fileno()})"],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                # the path reaches the writer's first imports (fabric_io itself may come from a folder the script
                # added); each call brings the path of its moment
                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(writer_path())},
            )
        self._connection = ours
        self._lock = threading.Lock()
        self._sent: set[int] = set()  # arenas whose file the writer has
        self._group: tuple[Any, ...] | None = None
        self.owner = os.getpid()

    @property
    def pid(self) -> int:
        return self._process.pid

    def alive(self) -> bool:
        return self._process.poll() is None

    def run(self, function: Any, *args: Any, stagings: tuple[SharedStaging, ...] = (), **kwargs: Any) -> Any:
        """``function(*args, **kwargs)`` in the writer process, its tensors read from ``stagings``' shared memory;
        returns its result or raises its exception (with the writer's traceback as a note)."""
        payload, arenas = dump_call((function, args, kwargs), stagings)
        live = [arena.number for arena in arenas]  # the writer lets go of the others
        with self._lock:
            new = [arena for arena in arenas if arena.number not in self._sent]
            self._sent.intersection_update(live)
            request = ("call", [(a.number, a.size) for a in new], live, writer_path(), payload)
            result = self._exchange(request, [a.fd for a in new])
            self._sent.update(arena.number for arena in new)
            return result

    def join_group(self, address: str, port: int, rank: int, world_size: int, timeout: timedelta) -> None:
        """Make the writer a member of the writers' process group (once per group; collective among the writers)."""
        group = (address, port, rank, world_size)
        with self._lock:
            if self._group != group:
                self._exchange(("group", *group, timeout.total_seconds()), [])
                self._group = group

    def close(self, timeout: float = 60.0) -> None:
        """Let the writer exit (it finishes a call in flight first); kill it after ``timeout`` seconds."""
        with self._lock:
            try:
                # shut down, not only closed: a process forked from this one (a DataLoader worker) may hold a copy
                # of the socket, which would keep the writer waiting for the next request
                with contextlib.suppress(OSError):
                    self._connection.shutdown(socket.SHUT_RDWR)
                self._connection.close()
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def _exchange(self, request: Any, fds: list[int]) -> Any:
        try:
            send_message(self._connection, request, fds)
            (outcome, value), _ = receive_message(self._connection)
        except (EOFError, OSError) as err:
            code = self._process.wait()
            raise RuntimeError(
                f"The checkpoint writer process (pid {self._process.pid}) ended with exit code {code} before it"
                " finished; the previous checkpoint is unchanged."
            ) from err
        if outcome == "error":
            raise value
        return value


_WRITER: WriterProcess | None = None
_WRITER_LOCK = threading.Lock()


def shared_writer() -> WriterProcess:
    """This process's writer process, started on first use (again if it has died); closed at interpreter exit."""
    global _WRITER
    with _WRITER_LOCK:
        writer = _WRITER
        if writer is None or writer.owner != os.getpid() or not writer.alive():
            if writer is None:
                atexit.register(close_shared_writer)
            writer = _WRITER = WriterProcess()
        return writer


def close_shared_writer() -> None:
    """Stop this process's writer process, if it started one."""
    global _WRITER
    with _WRITER_LOCK:
        writer, _WRITER = _WRITER, None
    if writer is not None and writer.owner == os.getpid():
        writer.close()


# -- the writer process ------------------------------------------------------------------------------------------
def _serve(connection: socket.socket) -> None:
    arenas: dict[int, Arena] = {}
    while True:
        try:
            message, fds = receive_message(connection)
        except EOFError:
            return
        try:
            outcome: tuple[str, Any] = ("ok", _handle(message, fds, arenas))
        except BaseException as err:  # handed back to the training process
            outcome = ("error", _portable(err))
        send_message(connection, outcome)


def _handle(message: tuple[Any, ...], fds: list[int], arenas: dict[int, Arena]) -> Any:
    kind = message[0]
    if kind == "group":
        _join_group(*message[1:])
        return None
    _, new, live, path, payload = message
    if sys.path != path:  # the training process's path changed since the last call (or this is the first)
        sys.path[:] = path
        importlib.invalidate_caches()
    for (number, size), fd in zip(new, fds):
        arenas[number] = Arena(size, fd=fd, number=number)
    for number in [number for number in arenas if number not in live]:
        arenas.pop(number).close()
    function, args, kwargs = load_call(payload, arenas)
    return function(*args, **kwargs)


def _join_group(address: str, port: int, rank: int, world_size: int, timeout: float) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        forget_meshes()
        dist.destroy_process_group()
    store = dist.TCPStore(address, port, world_size=None, is_master=False, timeout=timedelta(seconds=timeout))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout))


def _portable(err: BaseException) -> BaseException:
    """``err`` with the writer's traceback as a note, or a RuntimeError describing it where it cannot be pickled."""
    text = "".join(traceback.format_exception(err)).rstrip()
    try:
        if hasattr(err, "add_note"):
            err.add_note(f"(in the checkpoint writer process)\n{text}")
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"The checkpoint writer process raised:\n{text}")


def _run_on_idle_cpu() -> None:
    """Give this process the CPU only when nothing else wants it (Linux ``SCHED_IDLE``; elsewhere ``nice``)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return
    except (AttributeError, OSError):
        pass
    try:
        os.nice(BACKGROUND_NICENESS)
    except OSError:
        return


def main(fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: finish the save
    _run_on_idle_cpu()
    import torch

    torch.set_num_threads(1)
    with socket.socket(fileno=fd) as connection:
        _serve(connection)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
