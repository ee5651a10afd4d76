from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch
from typing_extensions import override

from fabric_io import AsyncCheckpointIO, TorchCheckpointIO
from fabric_testing import PicklePayload
from fabric_utils import PathLike

if TYPE_CHECKING:
    from conftest import Storage


class GatedCheckpointIO(TorchCheckpointIO):
    """A real ``TorchCheckpointIO`` whose saves wait for ``gate`` and which records how many ran at once."""

    def __init__(self, storage_options: dict[str, Any] | None = None) -> None:
        super().__init__(storage_options)
        self.gate = threading.Event()
        self.gate.set()
        self.saved: list[str] = []
        self.active = 0
        self.max_active = 0
        self.teardowns = 0
        self._lock = threading.Lock()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Any | None = None) -> None:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            assert self.gate.wait(timeout=30), "the test never opened the gate"
            super().save_checkpoint(checkpoint, path, storage_options)
            self.saved.append(str(path))
        finally:
            with self._lock:
                self.active -= 1

    def teardown(self) -> None:
        self.teardowns += 1


def _async_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fabric-async-checkpoint"]


def test_save_runs_in_the_background_and_teardown_joins(storage: Storage) -> None:
    inner = GatedCheckpointIO(storage.options)
    checkpoint_io = AsyncCheckpointIO(inner)
    inner.gate.clear()
    path = storage.path("ckpt.pt")
    checkpoint_io.save_checkpoint({"w": torch.arange(3.0)}, path)  # returns while the save is held at the gate
    assert checkpoint_io.is_saving
    assert inner.saved == []
    inner.gate.set()
    checkpoint_io.teardown()
    assert not checkpoint_io.is_saving
    assert _async_threads() == []
    assert inner.saved == [path]
    assert inner.teardowns == 1
    torch.testing.assert_close(inner.load_checkpoint(path)["w"], torch.arange(3.0))


def test_a_new_save_waits_for_the_previous_one(tmp_path: Path) -> None:
    inner = GatedCheckpointIO()
    checkpoint_io = AsyncCheckpointIO(inner)
    inner.gate.clear()
    checkpoint_io.save_checkpoint({"step": 1}, tmp_path / "1.pt")
    second = threading.Thread(target=checkpoint_io.save_checkpoint, args=({"step": 2}, tmp_path / "2.pt"))
    second.start()
    second.join(timeout=0.3)
    assert second.is_alive(), "the second save did not wait for the first"
    assert inner.active == 1
    inner.gate.set()
    second.join(timeout=30)
    assert not second.is_alive()
    checkpoint_io.teardown()
    assert inner.max_active == 1
    assert inner.saved == [str(tmp_path / "1.pt"), str(tmp_path / "2.pt")]


def test_load_and_remove_wait_for_the_pending_save(tmp_path: Path) -> None:
    inner = GatedCheckpointIO()
    checkpoint_io = AsyncCheckpointIO(inner)
    path = tmp_path / "ckpt.pt"
    inner.gate.clear()
    checkpoint_io.save_checkpoint({"step": 5}, path)
    loaded: list[dict] = []
    reader = threading.Thread(target=lambda: loaded.append(checkpoint_io.load_checkpoint(path)))
    reader.start()
    reader.join(timeout=0.3)
    assert reader.is_alive()
    assert loaded == []
    inner.gate.set()
    reader.join(timeout=30)
    assert loaded == [{"step": 5}]
    checkpoint_io.save_checkpoint({"step": 6}, path)
    checkpoint_io.remove_checkpoint(path)  # waits for the save, so nothing is left behind
    assert not path.exists()
    checkpoint_io.teardown()


def _failing_path(tmp_path: Path) -> Path:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where a directory is needed")
    return blocker / "ckpt.pt"


def test_background_error_is_raised_by_the_next_save_once(tmp_path: Path) -> None:
    checkpoint_io = AsyncCheckpointIO()
    checkpoint_io.save_checkpoint({"step": 1}, _failing_path(tmp_path))  # fails in the background
    with pytest.raises(OSError) as info:
        checkpoint_io.save_checkpoint({"step": 2}, tmp_path / "next.pt")
    if sys.version_info >= (3, 11):
        assert any("background save" in note for note in info.value.__notes__)
    assert not (tmp_path / "next.pt").exists(), "a save after a failed one must not start"
    checkpoint_io.save_checkpoint({"step": 3}, tmp_path / "next.pt")  # the error was reported once
    checkpoint_io.teardown()
    assert torch.load(tmp_path / "next.pt", weights_only=True) == {"step": 3}


def test_background_error_is_raised_by_load_and_by_teardown(tmp_path: Path) -> None:
    checkpoint_io = AsyncCheckpointIO()
    checkpoint_io.save_checkpoint({"step": 1}, _failing_path(tmp_path))
    with pytest.raises(OSError):
        checkpoint_io.load_checkpoint(tmp_path / "whatever.pt")

    inner = GatedCheckpointIO()
    checkpoint_io = AsyncCheckpointIO(inner)
    checkpoint_io.save_checkpoint({"step": 1}, _failing_path(tmp_path))
    with pytest.raises(OSError):
        checkpoint_io.teardown()
    assert inner.teardowns == 1, "the wrapped object is torn down even when the last save failed"
    assert _async_threads() == []


def test_snapshot_protects_the_saved_values_from_in_place_updates(tmp_path: Path) -> None:
    weights = torch.zeros(4)
    for snapshot, expected in ((True, torch.zeros(4)), (False, torch.ones(4))):
        weights.zero_()
        inner = GatedCheckpointIO()
        checkpoint_io = AsyncCheckpointIO(inner, snapshot=snapshot)
        inner.gate.clear()
        checkpoint_io.save_checkpoint({"w": weights}, tmp_path / f"{snapshot}.pt")
        weights.add_(1.0)  # training goes on while the save is pending
        inner.gate.set()
        checkpoint_io.teardown()
        torch.testing.assert_close(torch.load(tmp_path / f"{snapshot}.pt", weights_only=True)["w"], expected)


def test_snapshot_keeps_tied_tensors_tied(tmp_path: Path) -> None:
    shared = torch.randn(3)
    checkpoint_io = AsyncCheckpointIO()
    checkpoint_io.save_checkpoint({"a": shared, "nested": {"b": shared}}, tmp_path / "ckpt.pt")
    checkpoint_io.teardown()
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert loaded["a"].data_ptr() == loaded["nested"]["b"].data_ptr()
    torch.testing.assert_close(loaded["a"], shared)


def test_defaults_and_validation() -> None:
    checkpoint_io = AsyncCheckpointIO()
    assert isinstance(checkpoint_io.checkpoint_io, TorchCheckpointIO)
    assert repr(checkpoint_io) == "AsyncCheckpointIO(TorchCheckpointIO())"
    checkpoint_io.wait()  # nothing pending
    checkpoint_io.teardown()
    with pytest.raises(TypeError, match="must be a CheckpointIO, got str"):
        AsyncCheckpointIO("torch")  # type: ignore[arg-type]


class PermissiveCheckpointIO(TorchCheckpointIO):
    """A third-party checkpoint IO whose own default is to unpickle everything (it breaks the base's contract)."""

    @override
    def load_checkpoint(
        self, path: PathLike, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location, weights_only=False if weights_only is None else weights_only)


def test_loads_are_restricted_by_default_whatever_the_wrapped_default(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    torch.save({"extra": PicklePayload(marker)}, tmp_path / "hostile.pt")
    checkpoint_io = AsyncCheckpointIO(PermissiveCheckpointIO())
    with pytest.raises(ValueError, match="weights_only=False"):
        checkpoint_io.load_checkpoint(tmp_path / "hostile.pt")
    assert not marker.exists(), "the payload ran"
    checkpoint_io.load_checkpoint(tmp_path / "hostile.pt", weights_only=False)
    assert marker.exists(), "the explicit opt-out reaches the wrapped object"
    checkpoint_io.teardown()
