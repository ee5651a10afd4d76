"""Sharded checkpoints: ``torch.distributed.checkpoint`` (DCP) directories that are complete or absent, never half.

DCP has every rank write its shards and the coordinator write the ``.metadata`` file last. On top of that,
``save_sharded_checkpoint`` writes into a hidden sibling directory (``.NAME.partial``) and publishes it only once it
is complete: rank 0 marks it complete (a ``.complete`` file, written after every rank's shards and the metadata), moves
the existing checkpoint aside to ``.NAME.old``, renames the new one to ``NAME`` and then deletes the old one.

A process killed at any point of that leaves a checkpoint that loads as the complete old or the complete new one:
before the first rename ``NAME`` is the old checkpoint; after the second it is the new one; between the two renames
``NAME`` is missing and every load here (``check_sharded_checkpoint`` and what builds on it) reads the complete hidden
sibling instead, preferring the new one (``.NAME.partial`` carrying the completion marker) over the old one. The next
save puts that sibling back in place and removes every leftover before it writes anything. A directory that is
deleted is first stripped of its markers, so a half-deleted one never looks complete. ``load_sharded_checkpoint``
refuses a directory without ``.metadata`` instead of half-loading it. A save that fails (a full disk, an object that
cannot be pickled, ...) deletes its staging directory before it raises, and a full disk is reported as one
(``OSError`` with errno ``ENOSPC``: "No space left on device while saving <path>").

Reading goes through ``fabric_io.sharded_read``, which never runs code from a checkpoint unless told to.

These functions are collective when a process group is initialised: every rank of the group must call them. The
directory must be on a filesystem that every rank sees (local disk for one node, a shared filesystem otherwise).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import warnings
from collections.abc import Callable
from typing import Any

import torch.distributed as dist

from fabric_io.errors import UnsafeCheckpointError, no_space_error
from fabric_io.filesystem import exists, fsync_directory, is_remote_path, isdir, join_path, local_path
from fabric_utils import PathLike

METADATA_FILE = ".metadata"
"""The file DCP writes last; its presence marks a complete sharded checkpoint."""
COMPLETE_FILE = ".complete"
"""Written by ``save_sharded_checkpoint`` into its staging directory once every rank's shards are written; a staging
directory counts as a complete checkpoint (to fall back to after an interrupted replace) only with it."""


def is_sharded_checkpoint(path: PathLike) -> bool:
    """Whether ``path`` loads as a complete sharded checkpoint: a directory holding DCP's ``.metadata`` file, or, where
    a save was interrupted while replacing it (nothing at ``path``), its complete hidden sibling."""
    if not is_remote_path(path):
        return _resolve(local_path(path)) is not None
    return isdir(path) and exists(join_path(path, METADATA_FILE))


def save_sharded_checkpoint(
    state_dict: dict[str, Any], path: PathLike, *, process_group: dist.ProcessGroup | None = None
) -> None:
    """Save ``state_dict`` (tensors, DTensors, ShardedTensors, plain objects) as a DCP directory at ``path``.

    Collective: every rank of ``process_group`` (the default group when None; none at all in a single process) calls
    it with its own shards. Rank 0 first completes what an interrupted earlier save left (see the module docstring)
    and prepares a hidden sibling directory, all ranks write into it, and rank 0 marks it complete and renames it to
    ``path`` once DCP has written the metadata. An existing checkpoint (or file) at ``path`` is replaced only then;
    an existing directory that is not a sharded checkpoint is refused rather than deleted. A failure on any rank
    raises on every rank (with each failing rank's error in the message) and leaves ``path`` as it was.
    """
    target = _local_directory(path)
    staging, previous = _staging_paths(target)
    distributed = dist.is_available() and dist.is_initialized()
    _on_rank_zero(_prepare_staging, (target, staging), process_group, distributed)
    import torch.distributed.checkpoint as dcp  # imported on use: it takes a second to import

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to save in a single process")
            try:
                dcp.save(state_dict, checkpoint_id=staging, process_group=process_group, no_dist=not distributed)
            except dcp.CheckpointException as err:
                raise unwrap_checkpoint_error("Saving", path, err) from err
        _on_rank_zero(_commit, (staging, target, previous), process_group, distributed)
    except BaseException as err:
        # DCP raises on every rank once every rank has stopped writing (and a failed commit raises on all of them
        # after rank 0 stopped), so rank 0 can remove the staging directory without waiting for the others
        if not distributed or dist.get_rank(process_group) == 0:
            _discard(staging, target, previous)
        disk_full = no_space_error(path, err)
        if disk_full is not None and disk_full.args != err.args:  # a full disk, not reported as one yet
            raise disk_full from err
        raise


def check_sharded_checkpoint(path: PathLike) -> str:
    """The local directory to read the sharded checkpoint at ``path`` from; raise an error naming ``path`` if there is
    no complete one.

    That is ``path`` itself, except where a save was interrupted between moving the old checkpoint away and moving
    the new one in: then it is the complete new one (``.NAME.partial`` with its completion marker) or else the old
    one (``.NAME.old``), both complete checkpoints.
    """
    directory = _local_directory(path)
    if not os.path.lexists(directory):
        sibling = _resolve(directory)
        if sibling is None:
            raise FileNotFoundError(f"Sharded checkpoint not found: {os.fspath(path)!r}")
        return sibling
    if not os.path.isdir(directory):
        raise ValueError(
            f"{os.fspath(path)!r} is a file, not a sharded checkpoint directory; load single-file checkpoints with "
            "TorchCheckpointIO."
        )
    if not os.path.isfile(os.path.join(directory, METADATA_FILE)):
        raise ValueError(
            f"The sharded checkpoint {os.fspath(path)!r} is incomplete: it has no {METADATA_FILE!r} file, which "
            "torch.distributed.checkpoint writes last, so the save that produced it did not finish. Load an "
            "earlier checkpoint or save this one again."
        )
    return directory


def unwrap_checkpoint_error(action: str, path: PathLike, err: BaseException) -> Exception:
    """DCP's ``CheckpointException`` (a BaseException that ``except Exception`` misses) as a plain exception.

    It keeps the failing ranks' exception type when they agree on a common one (``RuntimeError`` for a missing key,
    ``ValueError`` for a shape mismatch, ``TypeError`` for an object that cannot be pickled, ``OSError``...). A
    refusal of the restricted load (``UnsafeCheckpointError``) and a full disk come out as they are.
    """
    failures = {rank: failure[0] for rank, failure in (getattr(err, "failures", None) or {}).items()}
    for failure in failures.values():
        if isinstance(failure, UnsafeCheckpointError):
            return UnsafeCheckpointError(str(failure))
        disk_full = no_space_error(path, failure) if action == "Saving" else None
        if disk_full is not None:
            return disk_full
    summary = "; ".join(f"rank {rank}: {type(exc).__name__}: {exc}" for rank, exc in sorted(failures.items()))
    message = f"{action} the sharded checkpoint {os.fspath(path)!r} failed ({summary or err})"
    kinds = {type(exc) for exc in failures.values()}
    kind = kinds.pop() if len(kinds) == 1 else RuntimeError
    if not issubclass(kind, (ValueError, TypeError, RuntimeError, OSError)):
        kind = RuntimeError
    try:
        return kind(message)
    except Exception:
        return RuntimeError(message)


def _staging_paths(target: str) -> tuple[str, str]:
    """The hidden siblings a save uses: the directory being written and the replaced checkpoint kept until the end."""
    parent, name = os.path.split(os.path.abspath(target))
    return os.path.join(parent, f".{name}.partial"), os.path.join(parent, f".{name}.old")


def _is_complete(directory: str, *, marked: bool = False) -> bool:
    """Whether ``directory`` holds DCP's metadata (and, with ``marked``, the completion marker of our saves)."""
    files = (METADATA_FILE, COMPLETE_FILE) if marked else (METADATA_FILE,)
    return os.path.isdir(directory) and all(os.path.isfile(os.path.join(directory, name)) for name in files)


def _resolve(target: str) -> str | None:
    """The complete checkpoint that ``target`` stands for: itself if it exists (None if incomplete); if nothing is
    there, the complete sibling an interrupted replace left (the new checkpoint first, then the old one)."""
    if os.path.lexists(target):
        return target if _is_complete(target) else None
    staging, previous = _staging_paths(target)
    if _is_complete(staging, marked=True):
        return staging
    if _is_complete(previous):
        return previous
    return None


def _local_directory(path: PathLike) -> str:
    if is_remote_path(path):
        raise ValueError(
            f"Sharded checkpoints are written to a local or shared filesystem directory, got the URL "
            f"{os.fspath(path)!r}. Save a single-file checkpoint to URLs, or mount the bucket as a filesystem."
        )
    return local_path(path)


def _prepare_staging(target: str, staging: str) -> None:
    if os.path.isdir(target) and not _is_complete(target) and os.listdir(target):
        raise ValueError(
            f"Refusing to replace {target!r} with a sharded checkpoint: it is a non-empty directory that is not a "
            f"sharded checkpoint (no {METADATA_FILE!r} file). Choose another path or remove it first."
        )
    _recover(target)
    os.makedirs(staging)


def _recover(target: str) -> None:
    """Finish what an interrupted save left beside ``target``: put the checkpoint that loads in its place (a single
    rename), then delete the leftover siblings. Killed at any point, the state still resolves to the same checkpoint."""
    staging, previous = _staging_paths(target)
    if not os.path.lexists(target):
        survivor = _resolve(target)
        if survivor is not None:
            os.rename(survivor, target)
            fsync_directory(os.path.dirname(target))
    _remove(staging)
    _remove(previous)


def _commit(staging: str, target: str, previous: str) -> None:
    assert os.path.isfile(os.path.join(staging, METADATA_FILE)), f"DCP wrote no metadata in {staging!r}"
    _mark_complete(staging)  # from here on, a load falls back to ``staging`` whenever ``target`` is missing
    _remove(previous)
    if os.path.lexists(target):
        # keep the old checkpoint until the new one is in place; only then delete it
        os.rename(target, previous)
    os.rename(staging, target)
    fsync_directory(os.path.dirname(target))
    _remove(previous)


def _discard(staging: str, target: str, previous: str) -> None:
    """Undo a save that failed: put the checkpoint it was replacing back at ``target`` (where a failed commit had
    moved it aside) and delete the staging directory. Errors of the clean-up itself are left to the next save,
    which removes every leftover, so that the save's own error is the one raised."""
    with contextlib.suppress(OSError):
        if not os.path.lexists(target) and os.path.lexists(previous):
            os.rename(previous, target)
        _remove(staging)


def _mark_complete(directory: str) -> None:
    """Write the completion marker durably: every rank's shards and DCP's metadata are written before it."""
    with open(os.path.join(directory, COMPLETE_FILE), "wb") as marker:
        marker.flush()
        os.fsync(marker.fileno())
    fsync_directory(directory)


def _remove(path: str) -> None:
    """Delete ``path``; a directory loses its markers first, so that a deletion cut short never looks complete."""
    if os.path.isdir(path) and not os.path.islink(path):
        for name in (COMPLETE_FILE, METADATA_FILE):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(path, name))
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _on_rank_zero(
    function: Callable[..., None],
    args: tuple[Any, ...],
    process_group: dist.ProcessGroup | None,
    distributed: bool,
) -> None:
    """Run ``function`` on the group's rank 0 only; every rank returns once it is done, or raises what it raised."""
    if not distributed:
        function(*args)
        return
    outcome: list[BaseException | None] = [None]
    if dist.get_rank(process_group) == 0:
        try:
            function(*args)
        except Exception as err:
            _broadcast([_portable(err)], process_group)
            raise
    _broadcast(outcome, process_group)
    if outcome[0] is not None:
        raise outcome[0]


def _portable(err: Exception) -> BaseException:
    """``err`` if it survives pickling (to reach the other ranks), else a RuntimeError with its message."""
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:
        return RuntimeError(f"Rank 0 failed while writing the sharded checkpoint: {type(err).__name__}: {err}")
    return err


def _broadcast(outcome: list[Any], process_group: dist.ProcessGroup | None) -> None:
    source = 0 if process_group is None else dist.get_global_rank(process_group, 0)
    dist.broadcast_object_list(outcome, src=source, group=process_group)
