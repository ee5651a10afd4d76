from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from fabric_io import atomic_save

if TYPE_CHECKING:
    from conftest import Storage


def _load(storage: Storage, path: str) -> dict:
    return torch.load(io.BytesIO(storage.read_bytes(path)), weights_only=True)


def test_atomic_save_round_trip_and_replace(storage: Storage) -> None:
    path = storage.path("nested", "ckpt.pt")
    atomic_save({"w": torch.arange(4.0), "step": 1}, path, **storage.options)
    assert _load(storage, path)["step"] == 1
    atomic_save({"w": torch.zeros(2), "step": 2}, path, **storage.options)
    loaded = _load(storage, path)
    assert loaded["step"] == 2
    torch.testing.assert_close(loaded["w"], torch.zeros(2))


def test_failed_serialisation_leaves_the_previous_file_intact(storage: Storage) -> None:
    path = storage.path("ckpt.pt")
    atomic_save({"step": 1, "w": torch.ones(1000)}, path, **storage.options)
    before = storage.read_bytes(path)
    with pytest.raises(TypeError, match="pickle"):
        # the tensor is written before the lock fails to pickle: a partial file exists for a moment
        atomic_save({"w": torch.ones(1000), "lock": threading.Lock()}, path, **storage.options)
    assert storage.read_bytes(path) == before


def test_failed_local_save_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    atomic_save({"step": 1}, path)

    class Interrupted:
        def __reduce__(self) -> tuple:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_save({"step": 2, "x": Interrupted()}, path)
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    assert torch.load(path, weights_only=True) == {"step": 1}


def test_saving_onto_a_directory_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "ckpt.pt").mkdir()
    with pytest.raises(OSError):
        atomic_save({"step": 1}, tmp_path / "ckpt.pt")
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_local_file_permissions_follow_the_umask(tmp_path: Path) -> None:
    reference = tmp_path / "plain"
    with open(reference, "wb") as f:
        f.write(b"x")
    atomic_save({"step": 1}, tmp_path / "ckpt.pt")
    mode = stat.S_IMODE(os.stat(tmp_path / "ckpt.pt").st_mode)
    assert mode == stat.S_IMODE(os.stat(reference).st_mode)


def test_file_url_is_saved_locally(tmp_path: Path) -> None:
    atomic_save({"step": 3}, f"file://{tmp_path}/ckpt.pt")
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True) == {"step": 3}


_WRITER = textwrap.dedent(
    """
    import sys, torch
    from fabric_io import atomic_save

    path = sys.argv[1]
    step = 0
    while True:
        step += 1
        atomic_save({"step": step, "w": torch.full((2_000_000,), float(step))}, path)
        print(step, flush=True)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
@pytest.mark.parametrize("delay", [0.0, 0.03, 0.08])
def test_a_process_killed_mid_save_leaves_a_complete_file(tmp_path: Path, delay: float) -> None:
    """A real crash: the writer is SIGKILLed while it saves in a loop; the file must still be a whole checkpoint."""
    path = tmp_path / "ckpt.pt"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None
        for _ in range(3):  # let a few saves complete, then kill it while it is (most likely) writing the next
            assert writer.stdout.readline(), "the writer process died"
        time.sleep(delay)
    finally:
        writer.kill()
        writer.communicate(timeout=30)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["step"] >= 3
    assert torch.equal(checkpoint["w"], torch.full((2_000_000,), float(checkpoint["step"])))
