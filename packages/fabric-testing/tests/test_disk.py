"""``small_disk`` is a real full disk: writing more than its size fails with ENOSPC, and it is unmounted after."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from fabric_testing import small_filesystem


def test_writing_past_the_size_fails_with_enospc(small_disk: Path) -> None:
    (small_disk / "fits.bin").write_bytes(b"x" * 1024)
    with pytest.raises(OSError) as info:
        (small_disk / "too-big.bin").write_bytes(b"x" * (3 << 20))
    assert info.value.errno == errno.ENOSPC


def test_unmounted_after_the_block(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "disk", "1m") as directory:
        assert os.path.ismount(directory)
        (directory / "file").write_bytes(b"x")
    assert not os.path.ismount(tmp_path / "disk")
    assert not (tmp_path / "disk" / "file").exists(), "the file lived on the tmpfs, gone with it"
