from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fabric_io import CheckpointIO
from fabric_utils import PathLike


class DictCheckpointIO(CheckpointIO):
    """A complete minimal implementation: checkpoints live in a dict, keyed by path."""

    def __init__(self) -> None:
        self.store: dict[str, dict[str, Any]] = {}

    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Any | None = None) -> None:
        self.store[str(path)] = dict(checkpoint)

    def load_checkpoint(
        self, path: PathLike, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if str(path) not in self.store:
            raise FileNotFoundError(f"Checkpoint file not found: {str(path)!r}")
        return self.store[str(path)]

    def remove_checkpoint(self, path: PathLike) -> None:
        self.store.pop(str(path), None)


def test_the_base_is_abstract() -> None:
    with pytest.raises(TypeError, match="abstract"):
        CheckpointIO()  # type: ignore[abstract]

    class Partial(CheckpointIO):
        def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Any = None) -> None:
            raise AssertionError("not called")

    with pytest.raises(TypeError, match="load_checkpoint"):
        Partial()  # type: ignore[abstract]


def test_a_subclass_needs_only_the_three_methods(tmp_path: Path) -> None:
    checkpoint_io = DictCheckpointIO()
    checkpoint_io.save_checkpoint({"w": torch.ones(1)}, tmp_path / "a")
    assert set(checkpoint_io.load_checkpoint(tmp_path / "a")) == {"w"}
    checkpoint_io.remove_checkpoint(tmp_path / "a")
    with pytest.raises(FileNotFoundError):
        checkpoint_io.load_checkpoint(tmp_path / "a")
    checkpoint_io.teardown()  # the default teardown has nothing to finish
    assert repr(checkpoint_io) == "DictCheckpointIO()"
