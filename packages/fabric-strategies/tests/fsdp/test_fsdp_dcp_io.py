"""Reading sharded (DCP) checkpoints safely, and consolidating them into one file."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re

import pytest
import torch

import fabric_io
from fabric_io import METADATA_FILE, save_sharded_checkpoint
from fabric_io import read_sharded_metadata as read_metadata
from fabric_strategies import UnsafeCheckpointError, consolidate_sharded_checkpoint
from fabric_strategies.fsdp import read_sharded_checkpoint
from fabric_strategies.fsdp.dcp_io import metadata_template, set_nested, top_level_keys


class Payload:
    """Unpickling this runs code: a checkpoint holding it must be refused under weights_only=True."""

    def __reduce__(self):
        return (os.getenv, ("HOME",))


def _state() -> dict:
    torch.manual_seed(0)
    return {
        "model": {"layer.weight": torch.randn(4, 3), "layer.bias": torch.randn(4)},
        "optimizer": {
            "state": {"layer.weight": {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 3)}},
            "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": ["layer.weight", "layer.bias"]}],
        },
        "step": 7,
        "meta": {"name": "run", "sizes": [1, 2]},
    }


def _assert_same(actual, expected):
    if isinstance(expected, torch.Tensor):
        assert torch.equal(actual, expected)
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for key in expected:
            _assert_same(actual[key], expected[key])
    elif isinstance(expected, list):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            _assert_same(a, e)
    else:
        assert actual == expected


def test_read_and_consolidate_give_back_the_saved_structure(tmp_path):
    save_sharded_checkpoint(_state(), tmp_path / "ckpt")
    assert top_level_keys(read_metadata(tmp_path / "ckpt")) == ["model", "optimizer", "step", "meta"]
    _assert_same(read_sharded_checkpoint(tmp_path / "ckpt"), _state())
    assert set(read_sharded_checkpoint(tmp_path / "ckpt", ["step", "meta"])) == {"step", "meta"}

    output = consolidate_sharded_checkpoint(tmp_path / "ckpt")
    assert output == str(tmp_path / "ckpt") + ".consolidated"
    _assert_same(torch.load(output, weights_only=True), _state())
    chosen = consolidate_sharded_checkpoint(str(tmp_path / "ckpt") + "/", tmp_path / "out" / "model.pt")
    _assert_same(torch.load(chosen, weights_only=True), _state())


def test_template_has_the_saved_shapes():
    template: dict = {}
    set_nested(template, ("a", "b", 1, "c"), 5)
    assert template == {"a": {"b": [None, {"c": 5}]}}


def test_metadata_template_matches_the_checkpoint(tmp_path):
    save_sharded_checkpoint(_state(), tmp_path / "ckpt")
    template = metadata_template(read_metadata(tmp_path / "ckpt"), ["model", "step"])
    assert template["model"]["layer.weight"].shape == (4, 3)
    assert template["step"] is None


def test_entries_that_are_not_plain_data_are_refused_unless_trusted(tmp_path):
    save_sharded_checkpoint({"weights": torch.ones(2), "payload": Payload()}, tmp_path / "ckpt")
    with pytest.raises(UnsafeCheckpointError, match=r"entry 'payload' holds .*weights_only=True"):
        read_sharded_checkpoint(tmp_path / "ckpt")
    with pytest.raises(UnsafeCheckpointError):
        consolidate_sharded_checkpoint(tmp_path / "ckpt", tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()
    trusted = read_sharded_checkpoint(tmp_path / "ckpt", weights_only=False)
    assert trusted["payload"] == os.getenv("HOME")


def test_metadata_naming_other_globals_is_refused(tmp_path):
    save_sharded_checkpoint({"weights": torch.ones(2)}, tmp_path / "ckpt")
    with open(tmp_path / "ckpt" / METADATA_FILE, "wb") as file:
        pickle.dump(Payload(), file)
    with pytest.raises(UnsafeCheckpointError, match=r"os.getenv.*not a checkpoint metadata type"):
        read_metadata(tmp_path / "ckpt")
    (tmp_path / "ckpt" / METADATA_FILE).write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"metadata of the sharded checkpoint .* is corrupt"):
        read_metadata(tmp_path / "ckpt")


def test_bad_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing"):
        consolidate_sharded_checkpoint(tmp_path / "missing")
    (tmp_path / "partial").mkdir()
    with pytest.raises(ValueError, match=r"incomplete"):
        consolidate_sharded_checkpoint(tmp_path / "partial")
    save_sharded_checkpoint({"weights": torch.ones(2)}, tmp_path / "ckpt")
    (tmp_path / "a_directory").mkdir()
    with pytest.raises(ValueError, match=r"existing directory"):
        consolidate_sharded_checkpoint(tmp_path / "ckpt", tmp_path / "a_directory")
    with pytest.raises(ValueError, match=r"replace the checkpoint"):
        consolidate_sharded_checkpoint(tmp_path / "ckpt", tmp_path / "ckpt")


def test_the_error_is_fabric_ios():
    assert UnsafeCheckpointError is fabric_io.UnsafeCheckpointError
    assert issubclass(UnsafeCheckpointError, ValueError)


@pytest.mark.parametrize("weights_only", [True, False])
def test_storage_files_outside_the_directory_are_never_read(tmp_path, weights_only):
    save_sharded_checkpoint({"weights": torch.zeros(2)}, tmp_path / "ckpt")
    save_sharded_checkpoint({"weights": torch.ones(2)}, tmp_path / "other")
    shard = next(name for name in os.listdir(tmp_path / "other") if name.endswith(".distcp"))
    with open(tmp_path / "ckpt" / METADATA_FILE, "rb") as file:
        metadata = pickle.load(file)
    metadata.storage_data = {
        index: dataclasses.replace(info, relative_path=f"../other/{shard}")
        for index, info in metadata.storage_data.items()
    }
    with open(tmp_path / "ckpt" / METADATA_FILE, "wb") as file:
        pickle.dump(metadata, file)
    bad = re.escape(repr(f"../other/{shard}")) + ".*outside the checkpoint directory"
    with pytest.raises(UnsafeCheckpointError, match=bad):
        consolidate_sharded_checkpoint(tmp_path / "ckpt", tmp_path / "out.pt", weights_only=weights_only)
    assert not (tmp_path / "out.pt").exists()
    with pytest.raises(UnsafeCheckpointError, match=bad):
        read_sharded_checkpoint(tmp_path / "ckpt", weights_only=weights_only)
