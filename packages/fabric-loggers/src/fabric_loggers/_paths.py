"""The folder layout shared by the file loggers: ``root_dir/name/version_N`` on a local path or any fsspec URL."""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from typing import Any

from fsspec import AbstractFileSystem
from typing_extensions import override

from fabric_io import get_filesystem, is_remote_path
from fabric_loggers.base import Logger
from fabric_utils import PathLike

_VERSION_FOLDER = re.compile(r"^version_(\d+)$")
_ALLOWED_FOLDER = "a relative folder such as 'exp' or 'exp/run_1' that stays inside root_dir"


def check_folder(what: str, folder: str) -> str:
    """``folder`` (a name, version or sub_dir) as given, when joining it to its parent stays inside that parent.

    Refused, before any directory is created: an absolute path (``/x``, ``\\x``, ``C:x`` on Windows), a URL, a
    ``..`` component (also between backslashes, which are separators on Windows), a NUL character. The check is
    on the text: a symbolic link that you created inside ``root_dir`` is followed as usual.
    """
    reason = None
    if "\0" in folder:
        reason = "it contains a NUL character"
    elif "://" in folder:
        reason = "it is a URL"
    elif posixpath.isabs(folder) or folder.startswith("\\") or os.path.isabs(folder) or os.path.splitdrive(folder)[0]:
        reason = "it is an absolute path"
    elif ".." in re.split(r"[/\\]", folder):
        reason = "it has a '..' component"
    if reason is not None:
        raise ValueError(f"{what}={folder!r} would write outside root_dir: {reason}. Use {_ALLOWED_FOLDER}.")
    return folder


def check_version(version: object) -> int | str | None:
    """A version is ``None`` (the next free number), an int >= 0 (folder ``version_N``) or a non-empty folder name
    that stays inside the experiment folder."""
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, (int, str)):
        raise TypeError(f"version must be an int, a str or None, got {type(version).__name__}: {version!r}")
    if isinstance(version, int) and version < 0:
        raise ValueError(f"version must be >= 0, got {version}")
    if isinstance(version, str) and not version.strip():
        raise ValueError(f"version must be a non-empty folder name, got {version!r}")
    return check_folder("version", version) if isinstance(version, str) else version


def check_name(name: object) -> str | None:
    """A name is ``None`` or ``""`` (no experiment folder) or a folder that stays inside ``root_dir``."""
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {type(name).__name__}: {name!r}")
    return check_folder("name", name) if name else None


def next_version(fs: AbstractFileSystem, root_dir: str) -> int:
    """One more than the largest ``version_N`` folder in ``root_dir``; 0 when there is none."""
    if not fs.isdir(root_dir):
        return 0
    found = []
    for entry in fs.ls(root_dir, detail=True):
        if entry.get("type") != "directory":
            continue
        match = _VERSION_FOLDER.match(posixpath.basename(str(entry["name"]).rstrip("/")))
        if match:
            found.append(int(match.group(1)))
    return max(found) + 1 if found else 0


class VersionedDirectory:
    """``root_dir[/name]/version_N``: resolves the version lazily and joins paths the way the storage expects."""

    def __init__(
        self,
        root_dir: PathLike,
        name: str | None,
        version: int | str | None,
        storage_options: Mapping[str, Any] | None,
    ) -> None:
        if not isinstance(root_dir, (str, os.PathLike)):
            raise TypeError(f"root_dir must be a str or os.PathLike, got {type(root_dir).__name__}: {root_dir!r}")
        root = os.fspath(root_dir)
        self.remote = is_remote_path(root)
        if self.remote:
            self.base = root.rstrip("/")
        else:  # a plain local path, also for ``file://`` and ``local://`` URLs (tensorboardX writes with `open`)
            self.base = os.path.expanduser(root.split("://", 1)[1] if "://" in root else root)
        self.name = check_name(name)
        self._version = check_version(version)
        self.storage_options = dict(storage_options or {})
        self._fs: AbstractFileSystem | None = None

    @property
    def fs(self) -> AbstractFileSystem:
        if self._fs is None:
            self._fs = get_filesystem(self.base, **self.storage_options)
        return self._fs

    def join(self, *parts: str) -> str:
        return posixpath.join(*parts) if self.remote else os.path.join(*parts)

    @property
    def root_dir(self) -> str:
        return self.join(self.base, self.name) if self.name else self.base

    @property
    def version(self) -> int | str:
        if self._version is None:
            self._version = next_version(self.fs, self.root_dir)
        return self._version

    @property
    def log_dir(self) -> str:
        version = self.version
        return self.join(self.root_dir, version if isinstance(version, str) else f"version_{version}")


class FolderLogger(Logger):
    """A logger that writes under ``root_dir/name/version_N`` (its ``_dir``): name, version and folders come from it."""

    _dir: VersionedDirectory

    @property
    @override
    def name(self) -> str | None:
        return self._dir.name

    @property
    @override
    def version(self) -> int | str:
        return self._dir.version

    @property
    @override
    def root_dir(self) -> str:
        return self._dir.root_dir

    @property
    @override
    def log_dir(self) -> str:
        return self._dir.log_dir
