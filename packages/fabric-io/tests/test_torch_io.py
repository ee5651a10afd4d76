from __future__ import annotations

import io
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from fabric_io import CheckpointIO, TorchCheckpointIO, UnsafeCheckpointError, exists
from fabric_testing import TinyMLP

if TYPE_CHECKING:
    from conftest import Storage


class CustomState:
    """A class torch's weights-only unpickler does not allow."""

    def __init__(self, value: int) -> None:
        self.value = value


def _checkpoint() -> dict:
    torch.manual_seed(0)
    model = TinyMLP()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 32)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 7, "meta": {"lr": [0.1, 0.2]}}


def test_round_trip(storage: Storage) -> None:
    checkpoint_io = TorchCheckpointIO(storage_options=storage.options)
    path = storage.path("run", "ckpt.pt")
    original = _checkpoint()
    checkpoint_io.save_checkpoint(original, path)
    loaded = checkpoint_io.load_checkpoint(path)
    assert loaded["step"] == 7
    assert loaded["meta"] == {"lr": [0.1, 0.2]}
    assert isinstance(loaded["model"], OrderedDict)
    torch.testing.assert_close(loaded["model"], original["model"])
    torch.testing.assert_close(loaded["optimizer"]["state"], original["optimizer"]["state"])
    model = TinyMLP()
    model.load_state_dict(loaded["model"])


def test_missing_file_names_the_path(storage: Storage) -> None:
    path = storage.path("missing.pt")
    with pytest.raises(FileNotFoundError, match=re.escape(repr(path))):
        TorchCheckpointIO(storage.options).load_checkpoint(path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_file_raises_value_error_naming_the_path(storage: Storage, damage: str) -> None:
    checkpoint_io = TorchCheckpointIO(storage.options)
    path = storage.path("ckpt.pt")
    checkpoint_io.save_checkpoint(_checkpoint(), path)
    data = storage.read_bytes(path)
    damaged = {"truncated": data[: len(data) // 2], "garbage": b"not a checkpoint at all", "empty": b""}[damage]
    storage.write_bytes(path, damaged)
    for weights_only in (True, False):
        with pytest.raises(ValueError, match=re.escape(repr(path)) + ".*corrupt, truncated") as info:
            checkpoint_io.load_checkpoint(path, weights_only=weights_only)
        assert "Weights only load failed" not in str(info.value)


def test_weights_only_refusal_explains_the_opt_out(storage: Storage) -> None:
    checkpoint_io = TorchCheckpointIO(storage.options)
    path = storage.path("ckpt.pt")
    checkpoint_io.save_checkpoint({"custom": CustomState(3), "w": torch.ones(2)}, path)
    with pytest.raises(ValueError, match=re.escape(repr(path))) as info:
        checkpoint_io.load_checkpoint(path)
    message = str(info.value)
    assert "CustomState" in message
    assert "weights_only=False only if you trust" in message
    loaded = checkpoint_io.load_checkpoint(path, weights_only=False)
    assert loaded["custom"].value == 3


class BlockedModulePayload:
    """Unpickles by calling ``os.getenv`` (harmless, but of a module torch's weights-only unpickler blocks)."""

    def __reduce__(self) -> tuple[object, ...]:
        return (os.getenv, ("HOME",))


@pytest.mark.parametrize(
    ("payload", "named"), [(BlockedModulePayload(), "'os.getenv'"), (CustomState(1), "CustomState")]
)
def test_refused_globals_are_named_as_refusals(tmp_path: Path, payload: object, named: str) -> None:
    """torch words a refused global of a module it blocks (``os``) differently from an unlisted class; both are
    refusals naming the global, not "corrupt file"."""
    path = str(tmp_path / "ckpt.pt")
    TorchCheckpointIO().save_checkpoint({"w": torch.ones(2), "payload": payload}, path)
    with pytest.raises(UnsafeCheckpointError, match="Refused to load .* contains .*" + re.escape(named)) as info:
        TorchCheckpointIO().load_checkpoint(path)
    assert "corrupt" not in str(info.value)


def test_map_location_is_passed_to_torch_load(tmp_path: Path) -> None:
    checkpoint_io = TorchCheckpointIO()
    checkpoint_io.save_checkpoint({"w": torch.ones(3)}, tmp_path / "ckpt.pt")
    loaded = checkpoint_io.load_checkpoint(tmp_path / "ckpt.pt", map_location="meta")
    assert loaded["w"].device.type == "meta"


def test_loading_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(str(tmp_path))) + ".*is a directory"):
        TorchCheckpointIO().load_checkpoint(str(tmp_path))


def test_remove_file_and_directory(storage: Storage) -> None:
    checkpoint_io = TorchCheckpointIO(storage.options)
    file = storage.path("single.pt")
    directory = storage.path("sharded")
    checkpoint_io.save_checkpoint({"a": 1}, file)
    checkpoint_io.save_checkpoint({"b": 2}, storage.path("sharded", "shard_0.pt"))
    checkpoint_io.save_checkpoint({"c": 3}, storage.path("sharded", "sub", "shard_1.pt"))

    checkpoint_io.remove_checkpoint(file)
    checkpoint_io.remove_checkpoint(directory)
    assert not exists(file, **storage.options)
    assert not exists(directory, **storage.options)
    checkpoint_io.remove_checkpoint(directory)  # already gone: nothing to do


def test_per_call_storage_options_are_merged(s3_storage: Storage) -> None:
    path = s3_storage.path("ckpt.pt")
    TorchCheckpointIO().save_checkpoint({"step": 1}, path, storage_options=s3_storage.options)
    assert torch.load(io.BytesIO(s3_storage.read_bytes(path)), weights_only=True) == {"step": 1}


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match=r"storage_options must be a dict.*str"):
        TorchCheckpointIO(storage_options="endpoint")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"storage_options must be a dict.*list"):
        TorchCheckpointIO().save_checkpoint({}, "x.pt", storage_options=["a"])
    with pytest.raises(TypeError, match=r"\(checkpoint=\.\.\.\) must be a dict.* got \[1, 2\] of type list"):
        TorchCheckpointIO().save_checkpoint([1, 2], "x.pt")  # type: ignore[arg-type]


def test_file_url(tmp_path: Path) -> None:
    checkpoint_io = TorchCheckpointIO()
    url = f"file://{tmp_path}/ckpt.pt"
    checkpoint_io.save_checkpoint({"step": 2}, url)
    assert os.path.isfile(tmp_path / "ckpt.pt")
    assert checkpoint_io.load_checkpoint(url) == {"step": 2}


def test_repr_hides_option_values() -> None:
    assert repr(TorchCheckpointIO()) == "TorchCheckpointIO()"
    secret = TorchCheckpointIO({"key": "AKIA", "secret": "hunter2"})
    assert repr(secret) == "TorchCheckpointIO(storage_options=<key, secret>)"
    assert secret.storage_options == {"key": "AKIA", "secret": "hunter2"}
    assert isinstance(secret, CheckpointIO)


def test_fsync_option_reaches_every_local_save(tmp_path: Path, fsynced_inodes: list[int]) -> None:
    synced = fsynced_inodes
    path = tmp_path / "ckpt.pt"
    plain = TorchCheckpointIO()
    assert plain.fsync is False
    plain.save_checkpoint({"step": 1}, path)
    assert synced == []
    durable = TorchCheckpointIO(fsync=True)
    assert durable.fsync is True
    assert repr(durable) == "TorchCheckpointIO(fsync=True)"
    assert repr(TorchCheckpointIO({"key": "k"}, fsync=True)) == "TorchCheckpointIO(storage_options=<key>, fsync=True)"
    durable.save_checkpoint({"step": 2}, path)
    assert synced == [os.stat(path).st_ino, os.stat(tmp_path).st_ino]
    assert durable.load_checkpoint(path) == {"step": 2}
    with pytest.raises(TypeError, match=r"TorchCheckpointIO\(fsync=\.\.\.\) must be True or False, got 1"):
        TorchCheckpointIO(fsync=1)  # type: ignore[arg-type]
