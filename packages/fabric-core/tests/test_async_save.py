"""``fabric.save(..., asynchronous=True)`` in one process: the file equals a synchronous save's, later training does
not reach it, errors surface at the next call, saves never overlap, a load waits, and exit finishes a save."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fabric_core import Fabric
from fabric_io import WRITER_VARIABLE, CpuStaging, SharedStaging, TorchCheckpointIO
from fabric_utils import PathLike


class SlowCheckpointIO(TorchCheckpointIO):
    """A real ``TorchCheckpointIO`` that waits ``delay`` seconds before each save and records overlapping saves."""

    def __init__(self, delay: float = 0.3) -> None:
        super().__init__()
        self.delay = delay
        self.active = 0
        self.most_active = 0
        self.saved: list[str] = []
        self._lock = threading.Lock()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Any | None = None) -> None:
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            time.sleep(self.delay)
            super().save_checkpoint(checkpoint, path, storage_options)
            self.saved.append(os.path.basename(path))
        finally:
            with self._lock:
                self.active -= 1


def _fabric_and_state(**kwargs: Any) -> tuple[Fabric, Any, Any]:
    fabric = Fabric(accelerator="cpu", devices=1, **kwargs)
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    model, optimizer = fabric.setup(module, torch.optim.Adam(module.parameters(), lr=0.1))
    _train(fabric, model, optimizer)
    return fabric, model, optimizer


def _train(fabric: Fabric, model: Any, optimizer: Any) -> None:
    fabric.backward(model(torch.randn(4, 8)).square().mean())
    optimizer.step()
    optimizer.zero_grad()


def assert_identical(saved: Any, expected: Any, where: str = "checkpoint") -> None:
    """Same structure, types and values; tensors equal bit for bit with the same dtype and shape."""
    assert type(saved) is type(expected), f"{where}: {type(saved).__name__} != {type(expected).__name__}"
    if isinstance(expected, torch.Tensor):
        assert saved.dtype == expected.dtype, where
        assert saved.shape == expected.shape, where
        assert torch.equal(saved.reshape(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8)), where
    elif isinstance(expected, dict):
        assert list(saved) == list(expected), where
        for key in expected:
            assert_identical(saved[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(saved) == len(expected), where
        for index, (a, b) in enumerate(zip(saved, expected)):
            assert_identical(a, b, f"{where}[{index}]")
    else:
        assert saved == expected, where


def test_the_file_equals_a_synchronous_save_and_later_changes_do_not_reach_it(tmp_path: Path) -> None:
    fabric, model, optimizer = _fabric_and_state(plugins=[SlowCheckpointIO()])
    state = {"model": model, "optimizer": optimizer, "step": 1, "notes": {"losses": [0.5]}}
    fabric.save(tmp_path / "sync.pt", state)
    handle = fabric.save(tmp_path / "async.pt", state, asynchronous=True)
    assert handle is not None
    assert not handle.done(), "the writer waits 0.3 s first: the call returned before the file was written"
    _train(fabric, model, optimizer)  # changes the weights and the optimizer state in place, right away
    state["notes"]["losses"].append(0.25)
    handle.wait()
    assert handle.done()
    expected = torch.load(tmp_path / "sync.pt", weights_only=True)
    assert_identical(torch.load(tmp_path / "async.pt", weights_only=True), expected)
    assert not torch.equal(model.state_dict()["0.weight"], expected["model"]["0.weight"]), "training went on"


@pytest.mark.parametrize("writer", ["process", "thread"])
def test_the_default_checkpoint_io_writes_in_the_writer_process_unless_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    monkeypatch.setenv(WRITER_VARIABLE, writer)
    fabric, model, optimizer = _fabric_and_state()
    state = {"model": model, "optimizer": optimizer, "step": 1}
    fabric.save(tmp_path / "sync.pt", state)

    def here(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("written in the training process")

    # the writer process imports TorchCheckpointIO afresh: this patch does not reach it
    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", here)
    handle = fabric.save(tmp_path / "async.pt", state, asynchronous=True)
    assert handle is not None
    _train(fabric, model, optimizer)
    if writer == "thread":
        with pytest.raises(AssertionError, match="written in the training process"):
            handle.wait()
        return
    handle.wait()
    expected = torch.load(tmp_path / "sync.pt", weights_only=True)
    assert_identical(torch.load(tmp_path / "async.pt", weights_only=True), expected)


@pytest.mark.parametrize("change", ["optimizer step", "in place", "through .data"])
def test_a_change_of_the_weights_before_their_copy_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """The parameters and optimizer states are copied by the worker (here slowly): a change of them before that
    waits (``handle.waited``), forward and backward do not, and the file equals the synchronous save."""
    fabric, model, optimizer = _fabric_and_state()
    state = {"model": model, "optimizer": optimizer, "step": 1}
    fabric.save(tmp_path / "sync.pt", state)
    for staging in (CpuStaging, SharedStaging):  # the worker's copy, in this process's memory or shared memory
        copy = staging.copy

        def slow_copy(self: Any, obj: Any, copy: Any = copy) -> Any:
            time.sleep(0.3)
            return copy(self, obj)

        monkeypatch.setattr(staging, "copy", slow_copy)
    handle = fabric.save(tmp_path / "async.pt", state, asynchronous=True)
    assert handle is not None
    fabric.backward(model(torch.randn(4, 8)).square().mean())
    assert handle.waited == 0.0, "forward and backward ran alongside the copy"
    with torch.no_grad():
        if change == "optimizer step":
            optimizer.step()
        elif change == "in place":
            for parameter in model.parameters():
                parameter.mul_(0)
        else:
            next(model.parameters()).data.fill_(7.0)
    assert handle.waited > 0.1, "the change waited for the copy"
    handle.wait()
    expected = torch.load(tmp_path / "sync.pt", weights_only=True)
    assert_identical(torch.load(tmp_path / "async.pt", weights_only=True), expected)
    assert not torch.equal(model.state_dict()["0.weight"], expected["model"]["0.weight"]), "the change was made"


def test_back_to_back_saves_do_not_overlap_and_a_load_waits_for_the_save_in_flight(tmp_path: Path) -> None:
    slow = SlowCheckpointIO()
    fabric, model, _ = _fabric_and_state(plugins=[slow])
    first = fabric.save(tmp_path / "first.pt", {"model": model, "step": 1}, asynchronous=True)
    second = fabric.save(tmp_path / "second.pt", {"model": model, "step": 2}, asynchronous=True)
    assert first is not None
    assert second is not None
    assert first.done(), "the second save started only once the first had finished"
    assert slow.saved == ["first.pt"]
    assert fabric.load(tmp_path / "second.pt", {"model": model}) == {"step": 2}, "the load waited for the file"
    assert second.done()
    fabric.save(tmp_path / "third.pt", {"step": 3})  # a synchronous save waits the same way
    assert slow.saved == ["first.pt", "second.pt", "third.pt"]
    assert slow.most_active == 1


@pytest.mark.parametrize("next_call", ["save", "load", "wait"])
def test_a_failed_save_raises_at_the_next_call_once_and_keeps_the_previous_checkpoint(
    small_disk: Path, next_call: str
) -> None:
    fabric = Fabric(accelerator="cpu", devices=1)
    path = small_disk / "last.pt"
    fabric.save(path, {"weights": torch.zeros(100_000), "step": 1})  # 400 kB: fits the 2 MiB disk
    handle = fabric.save(path, {"weights": torch.ones(450_000), "step": 2}, asynchronous=True)  # 1.8 MB does not
    assert handle is not None
    calls = {
        "save": lambda: fabric.save(small_disk / "other.pt", {"step": 3}, asynchronous=True),
        "load": lambda: fabric.load(path),
        "wait": handle.wait,
    }
    with pytest.raises(OSError) as info:
        calls[next_call]()
    assert info.value.errno == errno.ENOSPC
    assert any(str(path) in note for note in info.value.__notes__)
    previous = torch.load(path, weights_only=True)
    assert previous["step"] == 1
    assert torch.equal(previous["weights"], torch.zeros(100_000))
    assert sorted(os.listdir(small_disk)) in (["last.pt"], ["last.pt", "other.pt"]), "no temporary file is left"
    handle.wait()  # raised once: the next calls work
    assert fabric.load(path)["step"] == 1


def test_asynchronous_must_be_a_bool_checked_before_anything_is_written(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu", devices=1)
    with pytest.raises(TypeError, match=r"fabric.save\(asynchronous='yes'\) must be a bool"):
        fabric.save(tmp_path / "x.pt", {"step": 1}, asynchronous="yes")  # type: ignore[arg-type]
    assert not (tmp_path / "x.pt").exists()


_EXIT_SCRIPT = """
import sys, time, torch
from fabric_core import Fabric
from fabric_io import TorchCheckpointIO

class SlowCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None):
        time.sleep(1.0)
        super().save_checkpoint(checkpoint, path, storage_options)

# "writer": the default CheckpointIO, written by the writer process; else this script's, written by a thread
plugins = [] if sys.argv[2] == "writer" else [SlowCheckpointIO()]
fabric = Fabric(accelerator="cpu", devices=1, plugins=plugins)
fabric.launch()
weights = torch.arange(1000.0)
target = sys.argv[1] + "/last.pt"
if sys.argv[2] == "fail":  # the parent of the target is a file: the background write fails
    target = sys.argv[1] + "/not-a-directory/last.pt"
    open(sys.argv[1] + "/not-a-directory", "w").close()
fabric.save(target, {"weights": weights, "step": 5}, asynchronous=True)
weights.zero_()
print("script ended", flush=True)
"""


@pytest.mark.parametrize("outcome", ["ok", "writer", "fail"])
def test_exit_with_a_save_in_flight_finishes_it_or_reports_its_error(tmp_path: Path, outcome: str) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(_EXIT_SCRIPT))
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path), outcome], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "script ended" in result.stdout
    if outcome != "fail":
        saved = torch.load(tmp_path / "last.pt", weights_only=True)
        assert saved["step"] == 5
        assert torch.equal(saved["weights"], torch.arange(1000.0))
        assert "Traceback" not in result.stderr, result.stderr
    else:
        assert "the asynchronous save of" in result.stderr, result.stderr
        assert "NotADirectoryError" in result.stderr, result.stderr
