"""fsspec helpers: one way to reach local paths and URLs (``s3://``, ``memory://``, ...) alike.

A path is *remote* when it is not on the local filesystem, i.e. when it carries a protocol other than ``file``/``local``
(``memory://`` counts as remote: it has no directory on disk to place a temporary file in).
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Any

from fabric_utils import S3FS, MissingDependencyError, PathLike

if TYPE_CHECKING:  # fsspec itself is imported on the first remote path: it is ~10 ms of every start-up otherwise
    from fsspec import AbstractFileSystem

_LOCAL_PROTOCOLS = ("file", "local")
_S3_PROTOCOLS = ("s3", "s3a")


def path_protocol(path: PathLike) -> str:
    """The protocol of ``path`` as fsspec reads it: the text before its first ``://`` (or ``::`` of a chained URL),
    ``"file"`` when it has neither."""
    text = os.fspath(path)
    ends = [end for end in (text.find("::"), text.find("://")) if end >= 0]
    return text[: min(ends)] if ends else "file"


def is_remote_path(path: PathLike) -> bool:
    """Whether ``path`` lies outside the local filesystem (any fsspec URL other than ``file://``/``local://``)."""
    return path_protocol(path) not in _LOCAL_PROTOCOLS


def local_path(path: PathLike) -> str:
    """``path`` as a plain local path string: a ``file://`` or ``local://`` prefix is removed.

    Raises ``ValueError`` naming the path when it is remote.
    """
    text = os.fspath(path)
    protocol = path_protocol(text)
    if protocol not in _LOCAL_PROTOCOLS:
        raise ValueError(f"Expected a local path, got {text!r} (protocol {protocol!r}).")
    prefix = f"{protocol}://"
    return text[len(prefix) :] if text.startswith(prefix) else text


def get_filesystem(path: PathLike, **storage_options: Any) -> AbstractFileSystem:
    """The fsspec filesystem that serves ``path``; ``storage_options`` go to its constructor (e.g. ``endpoint_url``).

    Raises ``MissingDependencyError`` (with the install command) when the protocol's backend is not installed.
    """
    import fsspec

    text = os.fspath(path)
    protocol = path_protocol(text)
    if protocol in _S3_PROTOCOLS and not S3FS.available:
        S3FS.require(f"The path {text!r}")
    if protocol not in fsspec.available_protocols():
        known = ", ".join(sorted(fsspec.available_protocols()))
        raise ValueError(f"Unknown storage protocol {protocol!r} in {text!r}. Known fsspec protocols: {known}")
    try:
        filesystem, _ = fsspec.core.url_to_fs(text, **storage_options)
    except ImportError as err:
        raise MissingDependencyError(f"The path {text!r} needs an fsspec backend for {protocol!r}: {err}") from err
    return filesystem


def join_path(base: PathLike, *parts: str) -> str:
    """Join ``parts`` onto ``base``: with ``os.path.join`` for local paths, with ``/`` for URLs."""
    text = os.fspath(base)
    if not is_remote_path(text):
        return os.path.join(text, *parts)
    pieces = [text.rstrip("/"), *(part.strip("/") for part in parts)]
    return "/".join(piece for piece in pieces if piece)


def exists(path: PathLike, **storage_options: Any) -> bool:
    """Whether a file or directory exists at ``path``."""
    if not is_remote_path(path):
        return os.path.exists(local_path(path))
    return bool(get_filesystem(path, **storage_options).exists(os.fspath(path)))


def isdir(path: PathLike, **storage_options: Any) -> bool:
    """Whether ``path`` is a directory (a key prefix on object stores)."""
    if not is_remote_path(path):
        return os.path.isdir(local_path(path))
    return bool(get_filesystem(path, **storage_options).isdir(os.fspath(path)))


def makedirs(path: PathLike, exist_ok: bool = True, **storage_options: Any) -> None:
    """Create the directory ``path`` and its parents (on object stores this may create the bucket)."""
    if not is_remote_path(path):
        os.makedirs(local_path(path), exist_ok=exist_ok)
        return
    get_filesystem(path, **storage_options).makedirs(os.fspath(path), exist_ok=exist_ok)


def remove_path(path: PathLike, **storage_options: Any) -> bool:
    """Remove the file or directory (recursively) at ``path``; return whether something was removed."""
    filesystem = get_filesystem(path, **storage_options)
    target = local_path(path) if not is_remote_path(path) else os.fspath(path)
    if not filesystem.exists(target):
        return False
    filesystem.rm(target, recursive=True)
    return True


def fsync_directory(directory: str) -> None:
    """Make renames inside a local ``directory`` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def check_path(path: Any, *, caller: str) -> str:
    """``path`` as a string, when it is a checkpoint path: a non-empty ``str`` or ``os.PathLike`` (a local path or an
    fsspec URL). Raises ``TypeError`` (``ValueError`` for an empty one) naming the value and ``caller`` otherwise, e.g.
    ``check_path(None, caller="fabric.save(path=...)")``."""
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not isinstance(text, str):
        raise TypeError(
            f"{caller} must be a checkpoint path: a str or os.PathLike (a local path or an fsspec URL such as"
            f" 's3://bucket/run/last.ckpt'), got {path!r} of type {type(path).__name__}."
        )
    if not text.strip():
        raise ValueError(f"{caller} must be a checkpoint path, got the empty path {path!r}.")
    return text


def check_parent_directory(path: str) -> None:
    """Raise ``NotADirectoryError`` naming ``path`` when a local path cannot hold a file or directory because one of
    its parents is a file (``os.makedirs`` would report a bare ``FileExistsError``). Missing parents are fine: a save
    creates them."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        above = os.path.dirname(parent)
        if above == parent:
            return
        parent = above
    if not os.path.isdir(parent):
        raise NotADirectoryError(
            errno.ENOTDIR,
            f"Cannot save {path!r}: {parent!r} is a file, not a directory. Choose a path whose parent is a directory"
            " (or does not exist yet).",
        )
