from __future__ import annotations

import os
import re
import shutil
import threading
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from fabric_io import (
    METADATA_FILE,
    TorchCheckpointIO,
    check_sharded_checkpoint,
    is_sharded_checkpoint,
    load_sharded_checkpoint,
    read_sharded_metadata,
    save_sharded_checkpoint,
)
from fabric_io.sharded import COMPLETE_FILE
from fabric_testing import run_processes

FULL = torch.arange(16.0).reshape(8, 2)


def _siblings(path: Path) -> list[str]:
    return sorted(os.listdir(path.parent))


# --- single process (no process group) ---------------------------------------------------------------------------


def test_save_and_load_in_one_process(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    save_sharded_checkpoint({"w": FULL.clone(), "step": 4, "extra": {"lr": 0.5}}, path)
    assert is_sharded_checkpoint(path)
    assert _siblings(path) == ["ckpt"], "no staging or backup directory is left behind"
    assert check_sharded_checkpoint(path) == str(path)
    assert {"w", "step", "extra.lr"} <= set(read_sharded_metadata(path).state_dict_metadata)

    target = {"w": torch.zeros(8, 2), "step": 0, "extra": {"lr": 0.0}}
    assert load_sharded_checkpoint(target, path) is target
    torch.testing.assert_close(target["w"], FULL)
    assert target["step"] == 4
    assert target["extra"] == {"lr": 0.5}


def test_replacing_keeps_the_old_checkpoint_until_the_new_one_is_complete(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    save_sharded_checkpoint({"w": FULL.clone()}, path)
    with pytest.raises(Exception, match="pickle"):
        save_sharded_checkpoint({"w": FULL * 2, "lock": threading.Lock()}, path)  # fails while writing shards
    assert is_sharded_checkpoint(path), "the failed save destroyed the previous checkpoint"
    assert _siblings(path) == ["ckpt"], "the failed save left its staging directory behind"
    target = {"w": torch.zeros(8, 2)}
    load_sharded_checkpoint(target, path)
    torch.testing.assert_close(target["w"], FULL)

    save_sharded_checkpoint({"w": FULL * 3}, path)
    load_sharded_checkpoint(target, path)
    torch.testing.assert_close(target["w"], FULL * 3)
    assert _siblings(path) == ["ckpt"], "the stale staging directory of the failed save is cleaned up"


def test_a_file_at_the_target_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    TorchCheckpointIO().save_checkpoint({"w": FULL}, path)
    save_sharded_checkpoint({"w": FULL + 1}, path)
    assert is_sharded_checkpoint(path)


def test_an_unrelated_directory_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    path.mkdir()
    (path / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match=re.escape(repr(str(path))) + ".*not a sharded checkpoint"):
        save_sharded_checkpoint({"w": FULL}, path)
    assert (path / "notes.txt").read_text() == "precious"
    assert _siblings(path) == ["ckpt"]


def test_an_interrupted_save_is_detected_not_half_loaded(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    save_sharded_checkpoint({"w": FULL.clone()}, path)
    os.remove(path / METADATA_FILE)  # what a save killed before its last step leaves: shards, no metadata
    assert not is_sharded_checkpoint(path)
    target = {"w": torch.zeros(8, 2)}
    with pytest.raises(ValueError, match=re.escape(repr(str(path))) + r".*incomplete.*'\.metadata'"):
        load_sharded_checkpoint(target, path)
    torch.testing.assert_close(target["w"], torch.zeros(8, 2))


# --- a save killed while it replaces a checkpoint -----------------------------------------------------------------
# The states below are what ``save_sharded_checkpoint`` leaves when its process is killed at each step of replacing
# ``ckpt`` (``tests-integration/test_save_crash.py`` kills real saves at every file operation). Each is built from real
# checkpoints: ``_interrupted`` saves the old and the new version and arranges them as the killed save would have.


def _weights(path: Path) -> torch.Tensor:
    target = {"w": torch.zeros(8, 2)}
    load_sharded_checkpoint(target, path)
    return target["w"]


def _interrupted(tmp_path: Path, *, old: bool, moved_aside: bool, marked: bool) -> Path:
    """``ckpt`` being replaced by a save of ``FULL * 2``: ``old`` whether ``FULL`` was there before, ``moved_aside``
    whether the old one was already renamed to ``.ckpt.old``, ``marked`` whether the new one carries its marker."""
    path = tmp_path / "ckpt"
    if old:
        save_sharded_checkpoint({"w": FULL.clone()}, path)
    save_sharded_checkpoint({"w": FULL * 2}, tmp_path / "new")
    assert (tmp_path / "new" / COMPLETE_FILE).is_file(), "a published checkpoint carries the completion marker"
    if not marked:
        os.remove(tmp_path / "new" / COMPLETE_FILE)
    os.rename(tmp_path / "new", tmp_path / ".ckpt.partial")
    if old and moved_aside:
        os.rename(path, tmp_path / ".ckpt.old")
    return path


def test_killed_between_the_two_renames_loads_the_new_checkpoint(tmp_path: Path) -> None:
    path = _interrupted(tmp_path, old=True, moved_aside=True, marked=True)
    assert not path.exists()
    assert is_sharded_checkpoint(path)
    assert check_sharded_checkpoint(path) == str(tmp_path / ".ckpt.partial")
    torch.testing.assert_close(_weights(path), FULL * 2)
    assert "w" in read_sharded_metadata(path).state_dict_metadata
    # the next save first puts the new checkpoint in place, then replaces it
    save_sharded_checkpoint({"w": FULL * 3}, path)
    torch.testing.assert_close(_weights(path), FULL * 3)
    assert _siblings(path) == ["ckpt"]


def test_a_failed_save_after_an_interrupted_one_leaves_the_recovered_checkpoint_in_place(tmp_path: Path) -> None:
    path = _interrupted(tmp_path, old=True, moved_aside=True, marked=True)
    with pytest.raises(TypeError, match="pickle"):
        save_sharded_checkpoint({"w": FULL * 3, "lock": threading.Lock()}, path)
    assert path.is_dir(), "the interrupted save's complete checkpoint was put back at the target"
    torch.testing.assert_close(_weights(path), FULL * 2)
    assert _siblings(path) == ["ckpt"], "the failed save removed its own staging directory"


def test_an_unmarked_staging_directory_is_never_loaded(tmp_path: Path) -> None:
    # moved aside, but the new directory has no completion marker (a save from before markers): the old one loads
    path = _interrupted(tmp_path, old=True, moved_aside=True, marked=False)
    assert check_sharded_checkpoint(path) == str(tmp_path / ".ckpt.old")
    torch.testing.assert_close(_weights(path), FULL)
    save_sharded_checkpoint({"w": FULL * 3}, path)
    torch.testing.assert_close(_weights(path), FULL * 3)
    assert _siblings(path) == ["ckpt"]


def test_killed_before_the_first_rename_keeps_the_old_checkpoint(tmp_path: Path) -> None:
    for marked in (False, True):  # killed before or after marking the new checkpoint complete
        path = _interrupted(tmp_path, old=True, moved_aside=False, marked=marked)
        assert check_sharded_checkpoint(path) == str(path)
        torch.testing.assert_close(_weights(path), FULL)
        save_sharded_checkpoint({"w": FULL * 3}, path)
        torch.testing.assert_close(_weights(path), FULL * 3)
        assert _siblings(path) == ["ckpt"]
        shutil.rmtree(path)


def test_a_first_save_killed_before_its_rename(tmp_path: Path) -> None:
    path = _interrupted(tmp_path, old=False, moved_aside=False, marked=True)
    torch.testing.assert_close(_weights(path), FULL * 2)  # complete: it loads
    os.remove(tmp_path / ".ckpt.partial" / COMPLETE_FILE)  # killed before it was marked: there is no checkpoint
    assert not is_sharded_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="Sharded checkpoint not found: " + re.escape(repr(str(path)))):
        _weights(path)
    save_sharded_checkpoint({"w": FULL * 3}, path)
    torch.testing.assert_close(_weights(path), FULL * 3)
    assert _siblings(path) == ["ckpt"]


def test_killed_while_deleting_the_old_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    save_sharded_checkpoint({"w": FULL.clone()}, path)
    save_sharded_checkpoint({"w": FULL * 2}, tmp_path / ".ckpt.old")
    # a deletion cut short: the markers go first, so what is left never counts as a checkpoint
    os.remove(tmp_path / ".ckpt.old" / COMPLETE_FILE)
    os.remove(tmp_path / ".ckpt.old" / METADATA_FILE)
    shutil.rmtree(path)
    assert not is_sharded_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        _weights(path)


def test_missing_file_and_url_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(repr(str(tmp_path / "nope")))):
        load_sharded_checkpoint({}, tmp_path / "nope")
    (tmp_path / "single.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file, not a sharded checkpoint"):
        load_sharded_checkpoint({}, tmp_path / "single.pt")
    assert not is_sharded_checkpoint(tmp_path / "single.pt")
    assert not is_sharded_checkpoint(tmp_path / "nope")
    with pytest.raises(ValueError, match="s3://bucket/ckpt"):
        save_sharded_checkpoint({}, "s3://bucket/ckpt")


def test_is_sharded_checkpoint_on_fsspec_urls(memory_storage) -> None:  # type: ignore[no-untyped-def]
    path = memory_storage.path("ckpt")
    memory_storage.write_bytes(memory_storage.path("ckpt", "__0_0.distcp"), b"shard")
    assert not is_sharded_checkpoint(path)
    memory_storage.write_bytes(memory_storage.path("ckpt", METADATA_FILE), b"meta")
    assert is_sharded_checkpoint(path)


def test_strict_loading(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    save_sharded_checkpoint({"w": FULL.clone()}, path)
    target = {"w": torch.zeros(8, 2), "new": torch.full((2,), 7.0)}
    with pytest.raises(Exception, match="new"):
        load_sharded_checkpoint(target, path)
    load_sharded_checkpoint(target, path, strict=False)
    torch.testing.assert_close(target["w"], FULL)
    torch.testing.assert_close(target["new"], torch.full((2,), 7.0))


# --- two real processes with a gloo process group ----------------------------------------------------------------


def _sharded_state(world_size: int, scale: float) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world_size,))
    return {"w": distribute_tensor(FULL * scale, mesh, [Shard(0)]), "step": int(scale)}


def _save_then_load_across_ranks(rank: int, world_size: int, path: str) -> dict:
    state = _sharded_state(world_size, 1.0)
    save_sharded_checkpoint(state, path)
    assert is_sharded_checkpoint(path)  # on every rank, as soon as the call returns
    target = _sharded_state(world_size, 0.0)
    load_sharded_checkpoint(target, path)
    return {
        "local": target["w"].to_local().tolist(),  # plain data: tensors cannot cross the result pipe
        "step": target["step"],
        "siblings": sorted(os.listdir(os.path.dirname(path))),
    }


def test_two_ranks_save_and_load_then_one_process_reshards(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    results = run_processes(_save_then_load_across_ranks, str(path), world_size=2)
    for rank, result in enumerate(results):
        assert result["local"] == FULL[rank * 4 : (rank + 1) * 4].tolist()
        assert result["step"] == 1
        assert result["siblings"] == ["ckpt"]
    assert len([name for name in os.listdir(path) if name.endswith(".distcp")]) == 2, "each rank wrote its shard"
    full = {"w": torch.zeros(8, 2), "step": 0}
    load_sharded_checkpoint(full, path)  # world size 1, plain tensor: resharded from the two shards
    torch.testing.assert_close(full["w"], FULL)


def _failures_across_ranks(rank: int, world_size: int, path: str, unrelated: str) -> dict:
    outcome: dict = {}
    save_sharded_checkpoint(_sharded_state(world_size, 1.0), path)
    broken = {**_sharded_state(world_size, 2.0), "lock": threading.Lock()}
    try:
        save_sharded_checkpoint(broken, path)  # the rank that writes the lock fails; every rank must raise
    except Exception as err:
        outcome["failed_save"] = type(err).__name__
    dist.barrier()
    outcome["still_complete"] = is_sharded_checkpoint(path)
    outcome["siblings"] = sorted(os.listdir(os.path.dirname(path)))
    target = _sharded_state(world_size, 0.0)
    load_sharded_checkpoint(target, path)
    outcome["kept"] = target["w"].to_local().tolist()

    try:
        save_sharded_checkpoint(_sharded_state(world_size, 3.0), unrelated)  # rank 0 refuses; all ranks raise
    except ValueError as err:
        outcome["refused"] = str(err)

    dist.barrier()
    if rank == 0:
        os.remove(os.path.join(path, METADATA_FILE))
    dist.barrier()
    try:
        load_sharded_checkpoint(_sharded_state(world_size, 0.0), path)
    except ValueError as err:
        outcome["incomplete"] = str(err)
    return outcome


def test_failures_are_raised_on_every_rank_and_keep_the_old_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    unrelated = tmp_path / "data"
    unrelated.mkdir()
    (unrelated / "keep.txt").write_text("x")
    results = run_processes(_failures_across_ranks, str(path), str(unrelated), world_size=2)
    for rank, result in enumerate(results):
        assert result.get("failed_save") == "TypeError", f"rank {rank} did not see the failed save"
        assert result["still_complete"]
        assert ".ckpt.partial" not in result["siblings"], "the failed save left its staging directory behind"
        assert result["kept"] == FULL[rank * 4 : (rank + 1) * 4].tolist()
        assert "not a sharded checkpoint" in result["refused"]
        assert "incomplete" in result["incomplete"]
    assert (unrelated / "keep.txt").read_text() == "x"
