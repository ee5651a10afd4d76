"""``atomic_save``: write a ``torch.save`` file so that readers see the old file or the new one, never a partial one."""

from __future__ import annotations

import errno
import io
import os
import re
import sys
import uuid
from typing import Any

import torch

from fabric_io.errors import no_space_error
from fabric_io.filesystem import (
    check_parent_directory,
    check_path,
    fsync_directory,
    get_filesystem,
    is_remote_path,
    local_path,
)
from fabric_io.unpicklable import unpicklable_error
from fabric_utils import PathLike


def atomic_save(obj: Any, path: PathLike, *, fsync: bool = False, **storage_options: Any) -> None:
    """``torch.save(obj)`` to ``path`` atomically: a failure at any point leaves a previous file at ``path`` intact.

    Local paths: the bytes go to a temporary file ``.<name>.<random hex>.tmp`` beside the target, which then replaces
    the target in one ``os.replace``; missing parent directories are created. An exception or a killed process
    (SIGKILL, OOM killer) at any point leaves the previous file whole. Temporary files that earlier killed saves of
    the same target left behind are removed after a successful save.

    ``fsync=True`` also makes the new file durable before this returns: its data and then its directory entry are
    flushed to the storage device, so that even a power loss or kernel crash right after the save keeps the new
    file. That costs a full device write per save (often as long as the save itself). Without it, as with
    ``torch.save``, the operating system writes the data back in its own time, and a machine crash shortly after the
    save can lose the new file's contents on some filesystems.

    fsspec URLs: the object is serialised in memory first and then written with one ``pipe_file`` call, which object
    stores commit as a single upload (parents are not created there: object stores have no directories and creating
    one may create a bucket). ``fsync`` does not apply to them.

    Errors name the path: ``TypeError`` for a path that is not a ``str``/``os.PathLike``, ``NotADirectoryError`` when
    a parent of a local path is a file and ``IsADirectoryError`` when the path is a directory (both before anything is
    written), ``OSError`` with ``errno.ENOSPC`` when the disk fills up, and ``TypeError`` naming the key path (e.g.
    ``state['extra']['fn']``) of a value that cannot be pickled.
    """
    target = check_path(path, caller="atomic_save(path=...)")
    if not isinstance(fsync, bool):
        raise TypeError(f"atomic_save(fsync=...) must be True or False, got {fsync!r}")
    remote = is_remote_path(target)
    if not remote:
        _check_file_target(local_path(target))
    try:
        if remote:
            _save_remote(obj, target, storage_options)
        else:
            _save_local(obj, local_path(target), fsync)
    except Exception as err:
        clearer = no_space_error(target, err) or unpicklable_error(target, obj, err)
        if clearer is None:
            raise
        raise clearer from err


def _check_file_target(path: str) -> None:
    check_parent_directory(path)
    if os.path.isdir(path):
        raise IsADirectoryError(
            errno.EISDIR,
            f"Cannot save {path!r}: it is a directory, and this checkpoint is a single file. Choose a file path"
            " (sharded checkpoints, which are directories, are written by the FSDP and ModelParallel strategies).",
        )


def _save_remote(obj: Any, url: str, storage_options: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    get_filesystem(url, **storage_options).pipe_file(url, buffer.getvalue())


def _save_local(obj: Any, path: str, fsync: bool) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
    # 0o666 filtered by the umask: the same permissions a plain ``open(path, "wb")`` would give the file
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        # the filesystem's clock at the start of this save: older temporary files are leftovers of earlier saves
        started_ns = os.fstat(descriptor).st_mtime_ns
        preallocated = _preallocate(descriptor, _existing_size(path))
        with os.fdopen(descriptor, "wb") as file:
            torch.save(obj, file)
            if preallocated:
                file.truncate()  # flushes, then cuts what the new checkpoint did not fill
            if fsync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.remove(temporary)
        except FileNotFoundError:
            pass
        raise
    if fsync:
        fsync_directory(directory)
    remove_stale_temporaries(path, older_than_ns=started_ns)


def _existing_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


_FALLOCATE: list[Any] = []  # the C library's ``fallocate`` once looked up (empty list: not looked up yet)


def _preallocate(descriptor: int, size: int) -> bool:
    """Reserve ``size`` bytes for the new file with Linux's ``fallocate``; return whether that was done.

    When ``os.replace`` replaces an existing file, ext4 (by default, ``auto_da_alloc``) first allocates the disk
    blocks of the new file's delayed-allocation data and starts writing it back, inside the rename: ~40 ms for a
    100 MB checkpoint on the machine of ``benchmarks/README.md``, half as long as ``torch.save`` itself. Blocks
    reserved up front leave nothing to allocate, and the data is written back in the background as for
    ``torch.save``. The previous checkpoint's size is the estimate; the file is cut to its real size afterwards.

    Nothing happens off Linux, for an empty estimate, or where the filesystem does not support it: the raw system
    call is used, not ``os.posix_fallocate``, which would fall back to writing zeros through the whole file.
    """
    if size <= 0 or not sys.platform.startswith("linux"):
        return False
    if not _FALLOCATE:
        _FALLOCATE.append(_load_fallocate())
    fallocate = _FALLOCATE[0]
    return fallocate is not None and fallocate(descriptor, 0, 0, size) == 0


def _load_fallocate() -> Any:
    import ctypes  # imported by torch already

    try:
        function = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    if ctypes.sizeof(ctypes.c_long) != 8:  # a 32-bit C library's ``fallocate`` may take 32-bit offsets
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    function.restype = ctypes.c_int
    return function


def temporary_name_pattern(name: str) -> re.Pattern[str]:
    """The names of the temporary files that ``atomic_save`` writes for a target called ``name``."""
    return re.compile(re.escape(f".{name}.") + "[0-9a-f]{32}" + re.escape(".tmp"))


def remove_stale_temporaries(path: str, *, older_than_ns: int) -> list[str]:
    """Remove the temporary files of ``atomic_save`` for the local target ``path`` last modified before
    ``older_than_ns`` (``st_mtime_ns``): the leftovers of saves that were killed. Return the removed paths.

    Only regular files named exactly like those temporary files (``.<name>.<32 hex digits>.tmp``) are candidates.
    Newer ones are left alone: another process may be writing one of them right now.
    """
    directory = os.path.dirname(os.path.abspath(path))
    pattern = temporary_name_pattern(os.path.basename(path))
    removed: list[str] = []
    try:
        entries = os.scandir(directory)
    except OSError:
        return removed
    with entries:
        for entry in entries:
            if not pattern.fullmatch(entry.name):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                if entry.stat(follow_symlinks=False).st_mtime_ns >= older_than_ns:
                    continue
                os.remove(entry.path)
            except OSError:  # removed by someone else meanwhile, or not ours to remove
                continue
            removed.append(entry.path)
    return removed
