"""``TorchCheckpointIO``: one ``torch.save`` file per checkpoint, written atomically to a local path or fsspec URL."""

from __future__ import annotations

import io
import os
import pickle
import re
import reprlib
import struct
from collections.abc import Mapping
from typing import Any

import torch
from typing_extensions import override

from fabric_io.atomic import atomic_save
from fabric_io.base import CheckpointIO
from fabric_io.errors import UnsafeCheckpointError
from fabric_io.filesystem import check_path, get_filesystem, is_remote_path, local_path, remove_path
from fabric_utils import PathLike

# how torch's weights-only unpickler names what it refused: a global outside its allowlist, or one of a module it blocks
_REFUSED_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")

# What torch.load raises for a file it cannot read: truncated or corrupt archives (RuntimeError or OSError from the
# zip reader, EOFError, UnpicklingError), pickles naming code that is gone (ImportError, AttributeError), bad payloads.
_UNREADABLE = (
    pickle.UnpicklingError,
    EOFError,
    RuntimeError,
    OSError,
    ValueError,
    KeyError,
    ImportError,
    AttributeError,
    # garbage bytes can stop the weights-only unpickler in its framing, before any pickle error
    IndexError,
    struct.error,
)


class TorchCheckpointIO(CheckpointIO):
    """Saves a checkpoint dictionary with ``torch.save`` and loads it with ``torch.load``.

    Args:
        storage_options: fsspec options used for every path this object touches (e.g.
            ``{"client_kwargs": {"endpoint_url": "http://..."}}`` for an S3-compatible store). Options given to
            ``save_checkpoint`` are merged over them for that call.
        fsync: make every local save durable before ``save_checkpoint`` returns (the file's data and its directory
            entry flushed to the device, see ``fabric_io.atomic_save``), so that a power loss or kernel crash right
            after a save keeps the new checkpoint. Off by default, like ``torch.save``: saves stay atomic against
            errors and killed processes either way, and a flush to the device can cost as much as the save itself.
    """

    def __init__(self, storage_options: Mapping[str, Any] | None = None, *, fsync: bool = False) -> None:
        if not isinstance(fsync, bool):
            raise TypeError(f"TorchCheckpointIO(fsync=...) must be True or False, got {fsync!r}")
        self._storage_options = _check_storage_options(storage_options)
        self._fsync = fsync

    @property
    def fsync(self) -> bool:
        """Whether local saves are flushed to the storage device before ``save_checkpoint`` returns."""
        return self._fsync

    @property
    def storage_options(self) -> dict[str, Any]:
        return dict(self._storage_options)

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically (see ``fabric_io.atomic_save``, also for the errors raised)."""
        check_path(path, caller=f"{type(self).__name__}.save_checkpoint(path=...)")
        if not isinstance(checkpoint, Mapping):
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint(checkpoint=...) must be a dict of names to values, got"
                f" {reprlib.repr(checkpoint)} of type {type(checkpoint).__name__}."
            )
        options = self._storage_options
        if storage_options is not None:
            options = {**options, **_check_storage_options(storage_options)}
        atomic_save(checkpoint, path, fsync=self._fsync, **options)

    @override
    def load_checkpoint(
        self, path: PathLike, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Read the checkpoint at ``path``. ``weights_only`` defaults to True.

        Raises ``FileNotFoundError`` naming the path when nothing is there, and ``ValueError`` naming the path when
        the file is corrupt, truncated, not a torch file, or holds objects that ``weights_only=True`` refuses.
        """
        check_path(path, caller=f"{type(self).__name__}.load_checkpoint(path=...)")
        weights_only = True if weights_only is None else weights_only
        source = _open_for_load(path, self._storage_options)
        try:
            return torch.load(source, map_location=map_location, weights_only=weights_only)
        except (PermissionError, FileNotFoundError):
            raise
        except _UNREADABLE as err:
            raise _load_error(path, err, weights_only) from err

    @override
    def remove_checkpoint(self, path: PathLike) -> None:
        """Remove the file or directory at ``path`` (recursively); a path that does not exist is left alone."""
        remove_path(path, **self._storage_options)

    @override
    def __repr__(self) -> str:
        parts = []
        if self._storage_options:
            # keys only: storage options often hold credentials
            parts.append(f"storage_options=<{', '.join(sorted(self._storage_options))}>")
        if self._fsync:
            parts.append("fsync=True")
        return f"{type(self).__name__}({', '.join(parts)})"


def _check_storage_options(storage_options: Any | None) -> dict[str, Any]:
    if storage_options is None:
        return {}
    if not isinstance(storage_options, Mapping):
        raise TypeError(
            f"storage_options must be a dict of fsspec options (or None), got {type(storage_options).__name__}."
        )
    return dict(storage_options)


def _open_for_load(path: PathLike, storage_options: dict[str, Any]) -> str | io.BytesIO:
    """A local path as it is (torch reads it directly); a URL's bytes fetched with one read."""
    if not is_remote_path(path):
        target = local_path(path)
        if os.path.isdir(target):
            raise ValueError(
                f"Checkpoint path {os.fspath(path)!r} is a directory, not a checkpoint file. A sharded checkpoint "
                "directory is read with fabric.load under any strategy, or fabric_io.load_sharded_checkpoint."
            )
        if not os.path.exists(target):
            raise FileNotFoundError(f"Checkpoint file not found: {os.fspath(path)!r}")
        return target
    url = os.fspath(path)
    try:
        data = get_filesystem(url, **storage_options).cat_file(url)
    except (FileNotFoundError, IsADirectoryError) as err:
        raise FileNotFoundError(f"Checkpoint file not found: {url!r}") from err
    return io.BytesIO(data)


def _load_error(path: PathLike, err: BaseException, weights_only: bool) -> ValueError:
    name = os.fspath(path)
    if weights_only and _REFUSED_GLOBAL.search(str(err)):
        refused = refused_global(err)
        return UnsafeCheckpointError(
            f"Refused to load {name!r} with weights_only=True: it contains {refused}, which is not a tensor or a "
            "plain container. Pass weights_only=False only if you trust the source of this file (unpickling it "
            "can run arbitrary code), or allow the type with torch.serialization.add_safe_globals([...])."
        )
    # torch wraps the weights-only unpickler's own error in a long explanation; the inner one says what went wrong
    inner = err.__context__ if weights_only and isinstance(err.__context__, pickle.UnpicklingError) else err
    reason = str(inner).strip().splitlines()
    detail = f"{type(inner).__name__}: {reason[0]}" if reason else type(inner).__name__
    hint = (
        " If it is an older pickle-based checkpoint from a source you trust, weights_only=False may load it."
        if weights_only
        else ""
    )
    return ValueError(
        f"Could not load checkpoint {name!r}: the file is corrupt, truncated or not a torch checkpoint "
        f"({detail}).{hint}"
    )


def refused_global(err: BaseException) -> str:
    """The ``module.name`` that torch's weights-only unpickler refused (quoted), read from its error message; a
    general phrase when the message names none."""
    match = _REFUSED_GLOBAL.search(str(err))
    return repr(match.group(1)) if match else "an object type outside torch's weights-only allowlist"
