"""``is_shared_filesystem``: whether every process of a run sees the same files under a directory."""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path

import torch

from fabric_io import is_remote_path
from fabric_strategies.base import Strategy
from fabric_utils import PathLike

_MARKER_PREFIX = ".fabric-shared-filesystem-check-"


def _check_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout):
        raise TypeError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    if timeout <= 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    return float(timeout)


def _appears(marker: Path, token: str, timeout: float) -> bool:
    # a network filesystem may show another host's new file only after a while: look until the timeout
    deadline = time.monotonic() + timeout
    while True:
        try:
            if marker.read_text() == token:
                return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def is_shared_filesystem(strategy: Strategy, path: PathLike | None = None, timeout: float = 3) -> bool:
    """Whether every process sees the same files under ``path`` (default: rank 0's working directory).

    A remote URL (``s3://...``) counts as shared, and so does any path when one process runs. Otherwise rank 0 writes
    a small file there under a fresh name, every other process looks for it for up to ``timeout`` seconds in rank 0's
    directory, and the answer is True when all of them saw it. Every process must call this (it communicates), after
    the strategy's process group is set up. Raises ``OSError`` on every process when rank 0 cannot write there.
    """
    timeout = _check_timeout(timeout)
    if path is not None and is_remote_path(path):
        return True
    if strategy.world_size == 1:
        return True
    here = (Path.cwd() if path is None else Path(path)).resolve()
    directory, token = strategy.broadcast((str(here), uuid.uuid4().hex), src=0)
    marker = Path(directory) / f"{_MARKER_PREFIX}{token}"
    failure = None
    if strategy.is_global_zero:
        try:
            marker.write_text(token)
        except OSError as error:
            failure = f"{type(error).__name__}: {error}"
    failure = strategy.broadcast(failure, src=0)
    if failure is not None:
        raise OSError(f"Cannot tell whether {directory!r} is shared: rank 0 could not write a file there ({failure})")
    seen = strategy.is_global_zero or _appears(marker, token, timeout)
    everyone = strategy.all_reduce(torch.tensor(int(seen), device=strategy.root_device), reduce_op="min")
    if strategy.is_global_zero:  # every process has looked: the all-reduce waited for all of them
        marker.unlink(missing_ok=True)
    return bool(everyone.item() == 1)
