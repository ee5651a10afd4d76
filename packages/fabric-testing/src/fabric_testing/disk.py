"""A real full disk for tests: a tmpfs of a few MiB mounted for one test (where this process may mount one)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_filesystem(directory: str | os.PathLike[str], size: str = "2m") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``mount``'s notation: ``"2m"``) at ``directory`` (created) for the block, so that
    writing more than ``size`` there fails with ``ENOSPC``, as on a full disk; unmount it afterwards.

    Skips the test (``pytest.skip``, with the reason) where mounting is not permitted: not root, no ``mount``
    command, or a container without the capability.
    """
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("a full-disk test mounts a small tmpfs, but the mount/umount commands are not installed")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        pytest.skip("a full-disk test mounts a small tmpfs, which needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"a full-disk test mounts a small tmpfs, which is not permitted here: {mounted.stderr.strip()}")
    try:
        yield target
    finally:
        unmounted = subprocess.run(["umount", str(target)], capture_output=True, text=True)
        if unmounted.returncode != 0:  # still in use: detach it now, the kernel frees it once the last file closes
            subprocess.run(["umount", "-l", str(target)], check=True, capture_output=True)
