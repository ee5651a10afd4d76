from __future__ import annotations

import io
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import uuid
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


def test_fsync_is_opt_in(tmp_path: Path, fsynced_inodes: list[int]) -> None:
    seen = fsynced_inodes
    path = tmp_path / "ckpt.pt"
    atomic_save({"step": 1}, path)
    assert seen == []  # like torch.save: the OS writes the data back in its own time
    atomic_save({"step": 2}, path, fsync=True)
    # the new file's data (the temporary file, now renamed: same inode), then the directory entry of the rename
    assert seen == [os.stat(path).st_ino, os.stat(tmp_path).st_ino]
    assert torch.load(path, weights_only=True) == {"step": 2}
    with pytest.raises(TypeError, match=r"fsync=\.\.\.\) must be True or False, got 'yes'"):
        atomic_save({"step": 3}, path, fsync="yes")  # type: ignore[arg-type]
    assert torch.load(path, weights_only=True) == {"step": 2}


def _temporary(directory: Path, target: str) -> Path:
    return directory / f".{target}.{uuid.uuid4().hex}.tmp"


def test_a_successful_save_removes_stale_temporary_files_of_its_target_only(tmp_path: Path) -> None:
    stale = [_temporary(tmp_path, "ckpt.pt") for _ in range(2)]
    unrelated = [
        _temporary(tmp_path, "other.pt"),  # another target's
        tmp_path / f".ckpt.pt.{uuid.uuid4().hex[:31]}.tmp",  # not 32 hex digits
        tmp_path / f".ckpt.pt.{uuid.uuid4().hex.upper()}.tmp",  # uuid4().hex is lower case
        tmp_path / f"ckpt.pt.{uuid.uuid4().hex}.tmp",  # no leading dot
        tmp_path / f".ckpt.pt.{uuid.uuid4().hex}.tmp.bak",
    ]
    for file in stale + unrelated:
        file.write_bytes(b"partial")
    a_directory = _temporary(tmp_path, "ckpt.pt")
    a_directory.mkdir()
    in_progress = _temporary(tmp_path, "ckpt.pt")  # another process writing right now: newer than this save
    in_progress.write_bytes(b"partial")
    past, future = time.time() - 3600, time.time() + 3600
    for file in [*stale, *unrelated, a_directory]:
        os.utime(file, (past, past))
    os.utime(in_progress, (future, future))

    atomic_save({"step": 1}, tmp_path / "ckpt.pt")
    remaining = set(os.listdir(tmp_path))
    assert not remaining & {f.name for f in stale}
    assert remaining == {"ckpt.pt", a_directory.name, in_progress.name, *(f.name for f in unrelated)}


_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys, torch
    from fabric_io import atomic_save

    class KillWhilePickled:
        def __reduce__(self):
            os.kill(os.getpid(), signal.SIGKILL)

    atomic_save({"w": torch.ones(1_000_000), "crash": KillWhilePickled()}, sys.argv[1])
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_the_temporary_file_of_a_killed_save_is_removed_by_the_next_save(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    atomic_save({"step": 1}, path)
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)], capture_output=True, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    leftovers = [name for name in os.listdir(tmp_path) if name != "ckpt.pt"]
    assert len(leftovers) == 1
    assert re.fullmatch(r"\.ckpt\.pt\.[0-9a-f]{32}\.tmp", leftovers[0])
    assert torch.load(path, weights_only=True) == {"step": 1}  # the killed save changed nothing
    time.sleep(0.05)  # the leftover must be older than the next save on the filesystem's (coarse) clock
    atomic_save({"step": 2}, path)
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    assert torch.load(path, weights_only=True) == {"step": 2}


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_replacing_a_larger_or_smaller_file_writes_exactly_what_torch_save_writes(tmp_path: Path) -> None:
    """The space of the new file is reserved from the old file's size (Linux); the file is cut to its real size."""
    path = tmp_path / "ckpt.pt"
    for obj in ({"w": torch.arange(300_000.0)}, {"step": 1}, {"w": torch.ones(600_000)}, {"w": torch.ones(10)}):
        atomic_save(obj, path)
        assert path.read_bytes() == _torch_bytes(obj)
        assert os.listdir(tmp_path) == ["ckpt.pt"]
