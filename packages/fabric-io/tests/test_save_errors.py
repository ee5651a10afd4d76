"""A failed single-file save says why in the user's terms: full disk, a value that cannot be pickled, a bad path."""

from __future__ import annotations

import errno
import io
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from fabric_io import TorchCheckpointIO, atomic_save, check_path

if TYPE_CHECKING:
    from conftest import Storage

BIG = {"w": torch.ones(1_000_000)}  # 4 MB: more than the 2 MiB of the small disk


@pytest.mark.parametrize("fsync", [False, True])
def test_a_full_disk_says_so_and_keeps_the_previous_checkpoint(small_disk: Path, fsync: bool) -> None:
    path = small_disk / "ckpt.pt"
    atomic_save({"step": 1, "w": torch.ones(10)}, path, fsync=fsync)
    before = path.read_bytes()
    with pytest.raises(OSError, match=r"No space left on device while saving .*ckpt\.pt") as info:
        atomic_save(BIG, path, fsync=fsync)
    assert info.value.errno == errno.ENOSPC
    assert "inline_container" in repr(info.value.__cause__) or isinstance(info.value.__cause__, OSError)
    assert os.listdir(small_disk) == ["ckpt.pt"]  # the temporary file is gone
    assert path.read_bytes() == before


def test_a_full_disk_through_torch_checkpoint_io(small_disk: Path) -> None:
    path = str(small_disk / "nested" / "ckpt.pt")
    with pytest.raises(OSError, match="No space left on device while saving") as info:
        TorchCheckpointIO().save_checkpoint(BIG, path)
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(small_disk / "nested") == []


def _local_function() -> object:
    return lambda x: x


class _Holder:
    def __init__(self) -> None:
        class Local:
            pass

        self.local = Local


def test_an_unpicklable_value_is_named_by_its_key_path(storage: Storage) -> None:
    path = storage.path("ckpt.pt")
    atomic_save({"step": 1}, path, **storage.options)
    state = {"model": {"w": torch.ones(3)}, "extra": {"step": 2, "fn": _local_function()}}
    with pytest.raises(TypeError, match=r"state\['extra'\]\['fn'\] cannot be pickled") as info:
        atomic_save(state, path, **storage.options)
    assert "<lambda>" in str(info.value)
    assert repr(path) in str(info.value)
    assert info.value.__cause__ is not None  # pickle's own error stays attached
    assert torch.load(io.BytesIO(storage.read_bytes(path)), weights_only=True) == {"step": 1}


@pytest.mark.parametrize(
    ("state", "where"),
    [
        ({"items": [1, _Holder().local()]}, r"state\['items'\]\[1\]"),
        ({"a": ({"lock": threading.Lock()},)}, r"state\['a'\]\[0\]\['lock'\]"),
        ({"cls": _Holder().local}, r"state\['cls'\]"),
        ({1: {"gen": (i for i in range(2))}}, r"state\[1\]\['gen'\]"),
    ],
)
def test_the_key_path_reaches_into_lists_tuples_and_dicts(tmp_path: Path, state: dict, where: str) -> None:
    with pytest.raises(TypeError, match=where + " cannot be pickled"):
        TorchCheckpointIO().save_checkpoint(state, tmp_path / "ckpt.pt")
    assert os.listdir(tmp_path) == []


def test_a_state_that_refers_to_itself_is_searched_once(tmp_path: Path) -> None:
    state: dict = {"a": []}
    state["a"].append(state)
    state["b"] = _local_function()
    with pytest.raises(TypeError, match=r"state\['b'\] cannot be pickled"):
        atomic_save(state, tmp_path / "ckpt.pt")


def test_a_parent_that_is_a_file_is_reported_before_anything_is_written(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("not a directory")
    with pytest.raises(NotADirectoryError, match=r"Cannot save .*'.*run' is a file, not a directory") as info:
        TorchCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "run" / "sub" / "ckpt.pt")
    assert info.value.errno == errno.ENOTDIR
    assert sorted(os.listdir(tmp_path)) == ["run"]
    assert (tmp_path / "run").read_text() == "not a directory"


def test_a_directory_as_the_target_is_reported_before_anything_is_written(tmp_path: Path) -> None:
    (tmp_path / "ckpt.pt").mkdir()
    with pytest.raises(IsADirectoryError, match=r"ckpt\.pt': it is a directory"):
        atomic_save({"step": 1}, tmp_path / "ckpt.pt")
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    assert os.listdir(tmp_path / "ckpt.pt") == []


@pytest.mark.parametrize("path", [None, 3, b"ckpt.pt", ["ckpt.pt"]])
def test_a_path_that_is_not_a_path_is_named(path: object) -> None:
    named = rf"\(path=\.\.\.\) must be a checkpoint path.*got {re.escape(repr(path))} of type"
    with pytest.raises(TypeError, match=r"TorchCheckpointIO\.save_checkpoint" + named):
        TorchCheckpointIO().save_checkpoint({"step": 1}, path)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"TorchCheckpointIO\.load_checkpoint" + named):
        TorchCheckpointIO().load_checkpoint(path)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"atomic_save\(path=\.\.\.\) must be a checkpoint path"):
        atomic_save({"step": 1}, path)  # type: ignore[arg-type]


def test_check_path() -> None:
    assert check_path(Path("a") / "b.pt", caller="f(path=...)") == os.path.join("a", "b.pt")
    assert check_path("s3://bucket/ckpt", caller="f(path=...)") == "s3://bucket/ckpt"
    with pytest.raises(ValueError, match=r"f\(path=\.\.\.\) must be a checkpoint path, got the empty path ''"):
        check_path("", caller="f(path=...)")
