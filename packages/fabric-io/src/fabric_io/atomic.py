"""``atomic_save``: write a ``torch.save`` file so that readers see the old file or the new one, never a partial one."""

from __future__ import annotations

import io
import os
import uuid
from typing import Any

import torch

from fabric_io.filesystem import fsync_directory, get_filesystem, is_remote_path, local_path
from fabric_utils import PathLike


def atomic_save(obj: Any, path: PathLike, **storage_options: Any) -> None:
    """``torch.save(obj)`` to ``path`` atomically: a failure at any point leaves a previous file at ``path`` intact.

    Local paths: the bytes go to a temporary file beside the target, are flushed to disk, and the temporary file
    replaces the target in one ``os.replace``; missing parent directories are created. fsspec URLs: the object is
    serialised in memory first and then written with one ``pipe_file`` call, which object stores commit as a single
    upload (parents are not created there: object stores have no directories and creating one may create a bucket).
    """
    if is_remote_path(path):
        _save_remote(obj, os.fspath(path), storage_options)
    else:
        _save_local(obj, local_path(path))


def _save_remote(obj: Any, url: str, storage_options: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    get_filesystem(url, **storage_options).pipe_file(url, buffer.getvalue())


def _save_local(obj: Any, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    # 0o666 filtered by the umask: the same permissions a plain ``open(path, "wb")`` would give the file
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.remove(temporary)
        except FileNotFoundError:
            pass
        raise
    fsync_directory(directory)
