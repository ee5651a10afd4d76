"""SIGKILL a process at many points of ``fabric.save`` over an existing checkpoint, and read what is left on disk.

Kill points. While ``fabric.save`` runs, a profile hook (``sys.setprofile``) watches the calls the save makes into
C functions that touch files (``open``, ``os.rename``/``os.replace``, ``os.fsync``, ``os.unlink``, ``os.rmdir``, the
``write``/``flush``/``close`` methods of real files, torch's ``write_record``, ...). A first save records this
sequence of events (each call, and each return from one); every later save is SIGKILLed by its own hook at a chosen
event of the sequence (the n-th "before rename", the n-th "after write_record", ...): just before that call, or just
after it returned. The save code itself runs unchanged.

Two kinds:

- ``file``: one process, ``Fabric(devices=1)``, a single-file checkpoint. For every kill point the process forks a
  child that saves the next version and is killed; the parent then loads the checkpoint with ``fabric.load``.
- ``sharded``: ``FSDPStrategy`` on two processes (forked from this driver, with a fresh process group each time),
  a sharded checkpoint directory; one rank is killed, the other then fails or is stopped. The driver reads the
  directory back with ``consolidate_sharded_checkpoint`` (a process-group-free, weights-only read of every shard).

Each saved version ``v`` has contents that say which version they are: every parameter ``j`` holds ``v + j / 100``,
Adam's ``exp_avg`` and ``exp_avg_sq`` ``10 v + j`` and ``20 v + j``, and a plain entry ``version = v``. A checkpoint
read back is classified as ``old`` or ``new`` only if every one of these values matches that version; anything
else is reported as mixed. The results are written as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import traceback
import types
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from fabric_core import Fabric
from fabric_strategies import FSDPStrategy, consolidate_sharded_checkpoint
from fabric_testing import DistributedTestError, run_processes

# file operations: functions of the os / io modules, methods of real (not in-memory) files, torch's zip writer
FILE_FUNCTIONS = frozenset({"open", "rename", "replace", "fsync", "mkdir", "unlink", "remove", "rmdir", "close"})
FILE_METHODS = frozenset({"write", "flush", "close", "truncate"})
ZIP_WRITER_METHODS = frozenset({"write_record", "write_end_of_file"})
REAL_FILES = (io.FileIO, io.BufferedWriter, io.BufferedRandom, io.TextIOWrapper)
# callers whose file operations only read (imports, entry points, tracebacks) and happen in the first save only
READERS = ("<frozen importlib", "importlib/", "pathlib.py", "zipfile", "tokenize.py", "linecache.py")


def file_operation(function: Any) -> str | None:
    """The name of ``function`` if calling it touches a file (``os.rename``, ``file.write``, ...), else None."""
    name = getattr(function, "__name__", "")
    owner = getattr(function, "__self__", None)
    if isinstance(owner, types.ModuleType):
        return name if name in FILE_FUNCTIONS and owner.__name__ in ("posix", "nt", "io", "_io", "builtins") else None
    if isinstance(owner, REAL_FILES):
        return name if name in FILE_METHODS else None
    if name in ZIP_WRITER_METHODS:
        return name
    return None


class KillHook:
    """Records the file operations of a save as labels ("before rename", "after write_record", ...) and SIGKILLs this
    process at the ``occurrence``-th event with the label ``label`` (both counted from 0).

    Calls made by the import system and by readers of package metadata or source files (work that happens lazily,
    during the first save only) are not counted, so every save of the same state makes the same sequence of events.
    """

    def __init__(self, kill_at: tuple[str, int] | None = None) -> None:
        self.kill_at = kill_at
        self.events: list[str] = []
        self._seen: dict[str, int] = {}

    def __call__(self, frame: Any, event: str, arg: Any) -> None:
        if event not in ("c_call", "c_return") or any(part in frame.f_code.co_filename for part in READERS):
            return
        name = file_operation(arg)
        if name is None:
            return
        label = f"{'before' if event == 'c_call' else 'after'} {name}"
        occurrence = self._seen.get(label, 0)
        if self.kill_at == (label, occurrence):
            os.kill(os.getpid(), signal.SIGKILL)
        self._seen[label] = occurrence + 1
        self.events.append(label)

    def run(self, function: Any, *args: Any) -> None:
        sys.setprofile(self)
        try:
            function(*args)
        finally:
            sys.setprofile(None)


def kill_point(events: list[str], index: int) -> tuple[str, int] | None:
    """The (label, occurrence) of event number ``index`` of a traced save; None past the end (no kill)."""
    if index >= len(events):
        return None
    label = events[index]
    return label, events[:index].count(label)


# -- the versioned state ---------------------------------------------------------------------------------------
def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def take_a_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """One Adam step, so the optimizer has state (exp_avg, exp_avg_sq, step) for every parameter."""
    model(torch.randn(4, 16)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


@torch.no_grad()
def set_version(model: nn.Module, optimizer: torch.optim.Optimizer, version: int) -> None:
    for j, parameter in enumerate(model.parameters()):
        parameter.fill_(version + j / 100)
        optimizer.state[parameter]["exp_avg"].fill_(10 * version + j)
        optimizer.state[parameter]["exp_avg_sq"].fill_(20 * version + j)


def classify(model_state: dict[str, Any], optimizer_states: list[dict[str, Any]], version: Any) -> int | None:
    """The version every value of a loaded checkpoint agrees on, or None when they disagree."""
    if not isinstance(version, int) or len(model_state) != 6 or len(optimizer_states) != 6:
        return None
    for j, (tensor, moments) in enumerate(zip(model_state.values(), optimizer_states)):
        expected = (version + j / 100, 10 * version + j, 20 * version + j)
        found = (tensor, moments["exp_avg"], moments["exp_avg_sq"])
        if not all(torch.equal(t, torch.full_like(t, e)) for t, e in zip(found, expected)):
            return None
    return version


def outcome(old: int, new: int, loaded: int | None, error: str | None) -> str:
    if error is not None:
        return f"error: {error}"
    return {old: "old", new: "new"}.get(loaded, f"mixed or unexpected version {loaded}")  # type: ignore[arg-type]


# -- kill points and trials -----------------------------------------------------------------------------------------
def pick_points(events: list[str], count: int, must: tuple[str, ...] = ("rename", "replace")) -> list[int]:
    """``count`` event indices spread evenly over a traced save, plus every event of the operations in ``must``
    (before and after each rename that publishes the new checkpoint)."""
    last = len(events) - 1
    spread = {round(k * last / (count - 1)) for k in range(count)} if last > 0 else {0}
    publishing = {i for i, event in enumerate(events) if event.split()[-1] in must}
    return sorted(spread | publishing)


def run_trials(
    plan: list[tuple[int, int]],
    traces: list[list[str]],
    attempt: Any,
    read: Any,
    path: str,
) -> list[dict[str, Any]]:
    """For each (rank, event index) of ``plan``, then once without a kill (the control): save the next version over
    the checkpoint at ``path`` with ``attempt(rank, kill_at, version) -> killed`` and classify what ``read()`` finds.

    Every trial starts from a complete checkpoint at ``path``: where a kill left none, the last complete one is put
    back from a copy (and the failure is reported), so each kill point is tested in the same starting state.
    """
    results = []
    current = 1
    backup = f"{path}.backup-{os.getpid()}"
    copy(path, backup)
    for rank, index in [*plan, (0, -1)]:
        new = current + 1
        at = kill_point(traces[rank], index) if index >= 0 else None
        killed = attempt(rank, at, new)
        loaded, error = read()
        results.append(
            {
                "rank": rank,
                "point": index,
                "event": "none (control)" if at is None else at[0],
                "occurrence": None if at is None else at[1],
                "control": at is None,
                "killed": killed,
                "outcome": outcome(current, new, loaded, error),
            }
        )
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        if loaded in (current, new):
            current = loaded
            copy(path, backup)
        else:
            copy(backup, path)
    remove(backup)
    return results


def with_siblings(path: str) -> list[str]:
    """``path`` and the hidden siblings where an interrupted sharded save keeps its directories: all of them are the
    checkpoint on disk (a load reads the complete sibling when a kill left nothing at ``path``)."""
    parent, name = os.path.split(path)
    return [path, os.path.join(parent, f".{name}.partial"), os.path.join(parent, f".{name}.old")]


def copy(source: str, target: str) -> None:
    remove(target)
    for origin, destination in zip(with_siblings(source), with_siblings(target)):
        if os.path.isdir(origin):
            shutil.copytree(origin, destination)
        elif os.path.exists(origin):
            shutil.copy2(origin, destination)


def remove(path: str) -> None:
    for leftover in with_siblings(path):
        if os.path.isdir(leftover):
            shutil.rmtree(leftover)
        elif os.path.exists(leftover):
            os.remove(leftover)


# -- single file ------------------------------------------------------------------------------------------------
def file_kind(workdir: str, points: int) -> dict[str, Any]:
    torch.set_num_threads(1)  # forked children must not need the parent's thread pool
    path = os.path.join(workdir, "checkpoint.ckpt")
    fabric = Fabric(accelerator="cpu", devices=1)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters())
    model, optimizer = fabric.setup(model, optimizer)
    take_a_step(model, optimizer)

    def save(version: int, kill_at: tuple[str, int] | None) -> list[str]:
        set_version(model, optimizer, version)
        hook = KillHook(kill_at)
        hook.run(fabric.save, path, {"model": model, "optimizer": optimizer, "version": version})
        return hook.events

    def attempt(rank: int, kill_at: tuple[str, int] | None, version: int) -> bool:
        return forked(lambda: save(version, kill_at))["signal"] == signal.SIGKILL

    def read() -> tuple[int | None, str | None]:
        try:
            checkpoint = fabric.load(path)
        except Exception as err:
            return None, f"{type(err).__name__}: {err}"
        optimizer_states = [checkpoint["optimizer"]["state"][i] for i in sorted(checkpoint["optimizer"]["state"])]
        return classify(checkpoint["model"], optimizer_states, checkpoint.get("version")), None

    save(0, None)  # the existing checkpoint
    trace = forked(lambda: save(1, None))["events"]
    results = run_trials([(0, index) for index in pick_points(trace, points)], [trace], attempt, read, path)
    leftovers = sorted(name for name in os.listdir(workdir) if name != "checkpoint.ckpt")
    return {"trace": [trace], "results": results, "leftover_files": leftovers}


def forked(function: Any) -> dict[str, Any]:
    """Run ``function`` (it returns the events its hook saw) in a forked child; return how the child ended and the
    events, when it lived to send them."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, report, and leave without running the parent's exit handlers
        code = 0
        try:
            os.close(reader)
            events = function()
            with os.fdopen(writer, "w") as pipe:
                json.dump(events, pipe)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0:
        raise RuntimeError("a save failed instead of completing or being killed (see the traceback above)")
    return {"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None, "events": json.loads(text or "[]")}


# -- sharded (FSDP, two processes) ---------------------------------------------------------------------------------
def sharded_rank(
    rank: int, world_size: int, directory: str, version: int, kill_rank: int, kill_at: tuple[str, int] | None
) -> list[str]:
    torch.set_num_threads(1)
    strategy = FSDPStrategy(timeout=timedelta(seconds=20))
    fabric = Fabric(accelerator="cpu", devices=world_size, strategy=strategy)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters())
    model, optimizer = fabric.setup(model, optimizer)
    take_a_step(model, optimizer)
    set_version(model, optimizer, version)
    hook = KillHook(kill_at if rank == kill_rank else None)
    hook.run(fabric.save, directory, {"model": model, "optimizer": optimizer, "version": version})
    return hook.events


def read_sharded(directory: str, scratch: str) -> tuple[int | None, str | None]:
    output = os.path.join(scratch, "consolidated.pt")
    try:
        consolidate_sharded_checkpoint(directory, output)
        checkpoint = torch.load(output, weights_only=True)
    except Exception as err:
        return None, f"{type(err).__name__}: {err}"
    finally:
        if os.path.exists(output):
            os.remove(output)
    names = list(checkpoint["model"])
    optimizer_states = [checkpoint["optimizer"]["state"].get(name, {}) for name in names]
    return classify(checkpoint["model"], optimizer_states, checkpoint.get("version")), None


def sharded_kind(workdir: str, points: int) -> dict[str, Any]:
    # every trial forks two fresh ranks from this driver: import here, once, what each rank would otherwise import
    # on its own (the optimizer's first construction imports torch._dynamo, the sharded save torch's FSDP and
    # distributed-checkpoint modules: about 1.5 s of CPU per rank per trial, before the ranks can even meet)
    import torch._dynamo
    import torch.distributed.checkpoint
    import torch.distributed.fsdp  # noqa: F401

    directory = os.path.join(workdir, "checkpoint")
    scratch = tempfile.mkdtemp(dir=workdir)

    def attempt(rank: int, kill_at: tuple[str, int] | None, version: int) -> Any:
        args = (directory, version, rank, kill_at)
        try:
            return run_processes(sharded_rank, *args, start_method="fork", init_process_group=False, timeout=120)
        except DistributedTestError as err:
            return "exited with code -9" in err.errors.get(rank, "")

    attempt(0, None, 0)  # the existing checkpoint
    traces = attempt(0, None, 1)
    if read_sharded(directory, scratch)[0] != 1:
        raise RuntimeError(f"the traced save did not produce version 1: {read_sharded(directory, scratch)}")
    plan = [(0, index) for index in pick_points(traces[0], points)]
    plan += [(1, index) for index in pick_points(traces[1], max(3, points // 3), must=())]

    def killed(rank: int, kill_at: tuple[str, int] | None, version: int) -> bool:
        return attempt(rank, kill_at, version) is True

    results = run_trials(plan, traces, killed, lambda: read_sharded(directory, scratch), directory)
    leftovers = sorted(name for name in os.listdir(workdir) if name not in ("checkpoint", os.path.basename(scratch)))
    return {"trace": traces, "results": results, "leftover_files": leftovers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=("file", "sharded"))
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--points", type=int, default=12)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    report = (file_kind if args.kind == "file" else sharded_kind)(args.workdir, args.points)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
