"""is_shared_filesystem between real gloo processes, on one process, and for remote URLs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fabric_precision import Precision
from fabric_strategies import ParallelStrategy, SingleDeviceStrategy, is_shared_filesystem
from fabric_testing import run_processes


def _check(rank: int, world_size: int, shared: str) -> dict[str, object]:
    strategy = ParallelStrategy(parallel_devices=[torch.device("cpu")] * world_size)
    strategy.complete(precision=Precision())
    strategy.setup_environment()  # joins the gloo group that run_processes set up
    out: dict[str, object] = {"shared": is_shared_filesystem(strategy, shared, timeout=5)}
    out["remote"] = is_shared_filesystem(strategy, "s3://bucket/run")
    try:
        is_shared_filesystem(strategy, Path(shared) / "missing" / "dir")
    except OSError as error:
        out["error"] = str(error)
    out["left"] = sorted(p.name for p in Path(shared).iterdir())
    return out


def test_processes_on_one_host_share_their_filesystem(tmp_path: Path) -> None:
    for out in run_processes(_check, str(tmp_path)):
        assert out["shared"] is True
        assert out["remote"] is True
        assert "rank 0 could not write" in str(out["error"])
        assert "missing" in str(out["error"])
        assert out["left"] == []  # the marker file is removed again


def test_one_process_is_always_shared_and_the_timeout_is_checked(tmp_path: Path) -> None:
    strategy = SingleDeviceStrategy()
    assert is_shared_filesystem(strategy, tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=r"timeout.*got 0"):
        is_shared_filesystem(strategy, tmp_path, timeout=0)
    with pytest.raises(TypeError, match=r"timeout.*got '3'"):
        is_shared_filesystem(strategy, tmp_path, timeout="3")  # type: ignore[arg-type]
