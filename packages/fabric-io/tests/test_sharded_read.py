"""Sharded reads never run code from a checkpoint and never leave its directory; a failed sharded save cleans up.

The payload: an object whose unpickling calls ``open(marker, "w")``, so it creates a marker file, as a hostile
checkpoint could run any command. A load with the defaults must refuse it before it runs; ``weights_only=False``
lets it run (proof that the payload is real and that the opt-out is what enables it).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from fabric_io import (
    METADATA_FILE,
    UnsafeCheckpointError,
    load_sharded_checkpoint,
    read_sharded_metadata,
    resolve_inside,
    save_sharded_checkpoint,
)
from fabric_testing import PicklePayload

FULL = torch.arange(16.0).reshape(8, 2)


def _load(path: Path, **options: Any) -> dict[str, Any]:
    return load_sharded_checkpoint({"w": torch.zeros(8, 2)}, path, **options)


# --- code in the metadata or in an entry ---------------------------------------------------------------------------
def test_a_payload_in_the_metadata_never_runs_by_default(tmp_path: Path) -> None:
    path, marker = tmp_path / "ckpt", tmp_path / "ran"
    save_sharded_checkpoint({"w": FULL.clone()}, path)
    (path / METADATA_FILE).write_bytes(pickle.dumps(PicklePayload(marker)))
    for read in (lambda **kw: read_sharded_metadata(path, **kw), lambda **kw: _load(path, **kw)):
        with pytest.raises(UnsafeCheckpointError, match=r"io\.open.*weights_only=False"):
            read()
        assert not marker.exists(), "the payload ran"
        with pytest.raises(ValueError, match="not DCP metadata"):
            read(weights_only=False)
        assert marker.exists(), "weights_only=False did not unpickle the metadata: the test checkpoint is not hostile"
        marker.unlink()


def test_a_payload_in_an_entry_never_runs_by_default(tmp_path: Path) -> None:
    path, marker = tmp_path / "ckpt", tmp_path / "ran"
    save_sharded_checkpoint({"w": FULL.clone(), "extra": PicklePayload(marker)}, path)
    assert not marker.exists(), "saving must not run the payload"
    target: dict[str, Any] = {"w": torch.zeros(8, 2), "extra": None}
    with pytest.raises(UnsafeCheckpointError, match=r"entry 'extra' holds 'io\.open'.*weights_only=False"):
        load_sharded_checkpoint(target, path)
    assert not marker.exists(), "the payload ran"
    assert target["extra"] is None
    load_sharded_checkpoint(target, path, weights_only=False)
    assert marker.exists(), "weights_only=False did not unpickle the entry: the test checkpoint is not hostile"
    torch.testing.assert_close(target["w"], FULL)


def test_plain_entries_and_metadata_load_by_default(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    saved = {"w": FULL.clone(), "step": 3, "extra": {"lr": 0.5, "betas": (0.9, 0.99), "name": "adam", "ids": [1, 2]}}
    save_sharded_checkpoint(saved, path)
    target: dict[str, Any] = {"w": torch.zeros(8, 2), "step": 0, "extra": {"lr": 0.0, "betas": None, "name": None}}
    target["extra"]["ids"] = None
    load_sharded_checkpoint(target, path)
    assert target["step"] == 3
    assert target["extra"] == saved["extra"]


def test_flags_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    save_sharded_checkpoint({"w": FULL.clone()}, path)
    with pytest.raises(TypeError, match=r"load_sharded_checkpoint\(weights_only=...\) must be True or False, got 'no'"):
        _load(path, weights_only="no")
    with pytest.raises(TypeError, match=r"read_sharded_metadata\(weights_only=...\) must be True or False, got None"):
        read_sharded_metadata(path, weights_only=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"collective=False.*no process_group"):
        _load(path, collective=False, process_group=object())


# --- files outside the checkpoint directory ------------------------------------------------------------------------
def _point_storage_at(path: Path, name: str) -> None:
    """Rewrite ``path``'s metadata so that every entry is read from the storage file ``name``."""
    with open(path / METADATA_FILE, "rb") as file:
        metadata = pickle.load(file)  # our own checkpoint: trusted
    metadata.storage_data = {
        index: dataclasses.replace(info, relative_path=name) for index, info in metadata.storage_data.items()
    }
    with open(path / METADATA_FILE, "wb") as file:
        pickle.dump(metadata, file)


def _escape(tmp_path: Path, how: str) -> tuple[Path, str]:
    """A checkpoint ``ckpt`` (of zeros) whose storage leads into the checkpoint ``other`` (of ``FULL``) by ``how``;
    the name the error must quote."""
    path, other = tmp_path / "ckpt", tmp_path / "other"
    save_sharded_checkpoint({"w": torch.zeros(8, 2)}, path)
    save_sharded_checkpoint({"w": FULL.clone()}, other)
    shard = next(name for name in os.listdir(other) if name.endswith(".distcp"))
    if how == "parent":
        name = f"../other/{shard}"
        _point_storage_at(path, name)
    elif how == "absolute":
        name = str(other / shard)
        _point_storage_at(path, name)
    elif how == "symlinked file":
        name = shard
        os.remove(path / shard)
        os.symlink(other / shard, path / shard)
    else:  # the metadata file itself leads out
        name = METADATA_FILE
        os.remove(path / METADATA_FILE)
        os.symlink(other / METADATA_FILE, path / METADATA_FILE)
    return path, name


@pytest.mark.parametrize("how", ["parent", "absolute", "symlinked file", "symlinked metadata"])
@pytest.mark.parametrize("weights_only", [True, False])
def test_no_file_outside_the_checkpoint_directory_is_read(tmp_path: Path, how: str, weights_only: bool) -> None:
    path, name = _escape(tmp_path, how)
    expected = re.escape(repr(name)) + ".*outside the checkpoint directory " + re.escape(repr(str(path)))
    with pytest.raises(UnsafeCheckpointError, match=expected):
        read_sharded_metadata(path, weights_only=weights_only)
    target = {"w": torch.zeros(8, 2)}
    with pytest.raises(UnsafeCheckpointError, match=expected):
        load_sharded_checkpoint(target, path, weights_only=weights_only)
    assert torch.equal(target["w"], torch.zeros(8, 2)), "the other checkpoint's data was read"


def test_resolve_inside(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "file").write_bytes(b"")
    assert resolve_inside(tmp_path, "sub/file") == str((tmp_path / "sub" / "file").resolve())
    assert resolve_inside(tmp_path, "sub/../sub/file") == str((tmp_path / "sub" / "file").resolve())
    os.symlink(tmp_path, tmp_path / "sub" / "up")
    for name in ("../x", "/etc/passwd", "sub/up/../..", "", ".", "a\0b"):
        with pytest.raises(UnsafeCheckpointError, match=re.escape(repr(name))):
            resolve_inside(tmp_path / "sub", name)


# --- a failed save cleans up ---------------------------------------------------------------------------------------
def test_a_full_disk_is_reported_as_one_and_leaves_no_staging_directory(small_disk: Path) -> None:
    path = small_disk / "ckpt"
    save_sharded_checkpoint({"w": FULL.clone()}, path)
    with pytest.raises(OSError, match=r"No space left on device while saving " + re.escape(repr(str(path)))) as info:
        save_sharded_checkpoint({"w": torch.zeros(1024, 1024)}, path)  # 4 MiB on a 2 MiB disk
    assert info.value.errno == errno.ENOSPC
    assert sorted(os.listdir(small_disk)) == ["ckpt"], "the failed save left its staging directory on the full disk"
    torch.testing.assert_close(_load(path)["w"], FULL)
    save_sharded_checkpoint({"w": FULL * 2}, path)  # the space is free again
    torch.testing.assert_close(_load(path)["w"], FULL * 2)
