"""fabric.save / load / load_raw: a mistake or a failure is reported in the user's terms, naming the value, the
state entry and the file, before any file is touched (issue #14)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from fabric_core import Fabric
from fabric_testing import TinyMLP


def _fabric() -> Fabric:
    return Fabric(accelerator="cpu", devices=1)


@pytest.mark.parametrize("path", [None, 5, {"a": 1}])
def test_a_path_that_is_not_a_path_is_named(tmp_path: Path, path: object) -> None:
    fabric = _fabric()
    with pytest.raises(TypeError, match=r"fabric\.save\(path=\.\.\.\) must be a checkpoint path: a str or os\.Path"):
        fabric.save(path, {"step": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"fabric\.load\(path=\.\.\.\) must be a checkpoint path.*got"):
        fabric.load(path)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"fabric\.load_raw\(path=\.\.\.\) must be a checkpoint path.*got"):
        fabric.load_raw(path, torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_swapped_arguments_are_explained(tmp_path: Path) -> None:
    fabric = _fabric()
    path = str(tmp_path / "ckpt.pt")
    with pytest.raises(TypeError, match=r"fabric\.save takes the path first: fabric\.save\(path, state\)\. Got a dict"):
        fabric.save({"step": 1}, path)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"fabric\.load_raw\(path, obj\)\. Got a Linear as the path"):
        fabric.load_raw(torch.nn.Linear(2, 2), path)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_a_state_that_is_not_a_dict_is_named(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"fabric\.save\(state=\.\.\.\) must be a dict .* got None of type NoneType"):
        _fabric().save(tmp_path / "ckpt.pt", None)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_a_parent_that_is_a_file_is_reported_before_anything_is_written(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("a file")
    with pytest.raises(NotADirectoryError, match=r"Cannot save '.*runs/last\.ckpt': '.*runs' is a file") as info:
        _fabric().save(tmp_path / "runs" / "last.ckpt", {"model": TinyMLP()})
    assert info.value.errno == errno.ENOTDIR
    assert os.listdir(tmp_path) == ["runs"]


def test_an_unpicklable_value_is_named_by_its_key_path(tmp_path: Path) -> None:
    fabric = _fabric()
    model = fabric.setup(TinyMLP())
    path = tmp_path / "ckpt.pt"
    fabric.save(path, {"model": model, "step": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"state\['extra'\]\['fn'\] cannot be pickled.*local object"):
        fabric.save(path, {"model": model, "extra": {"fn": lambda x: x}})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_a_full_disk_says_so_and_keeps_the_previous_checkpoint(small_disk: Path) -> None:
    fabric = _fabric()
    path = small_disk / "ckpt.pt"
    fabric.save(path, {"step": 1})
    with pytest.raises(OSError, match=r"No space left on device while saving '.*ckpt\.pt'") as info:
        fabric.save(path, {"model": torch.nn.Linear(1000, 1000)})  # 4 MB of weights on a 2 MiB disk
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(small_disk) == ["ckpt.pt"]
    assert fabric.load(path) == {"step": 1}


def test_a_strict_mismatch_names_the_state_entry_and_the_file(tmp_path: Path) -> None:
    fabric = _fabric()
    path = tmp_path / "ckpt.pt"
    fabric.save(path, {"model": fabric.setup(TinyMLP())})
    other = fabric.setup(torch.nn.Sequential(torch.nn.Linear(32, 3)))
    with pytest.raises(RuntimeError, match=r"(?s)state\['model'\] from the checkpoint '.*ckpt\.pt': .*Missing key"):
        fabric.load(path, {"model": other})
    torch.save(torch.nn.Linear(32, 3).state_dict(), tmp_path / "raw.pt")
    with pytest.raises(RuntimeError, match=r"(?s)the Linear module from the checkpoint '.*raw\.pt': .*size mismatch"):
        fabric.load_raw(tmp_path / "raw.pt", fabric.setup(torch.nn.Linear(32, 4)))
