"""The writer process of asynchronous saves: a state staged in shared memory is written there as ``torch.save`` would
write the original; its errors come back; a dead writer is reported; what it cannot import stays in this process."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from fabric_io import (
    WRITER_VARIABLE,
    SharedStaging,
    TorchCheckpointIO,
    WriterProcess,
    atomic_save,
    runs_in_writer,
    writer_process_enabled,
)
from fabric_io.shared_staging import shared_staging_available

pytestmark = pytest.mark.skipif(not shared_staging_available(), reason="needs os.memfd_create (Linux)")


class ScriptCheckpointIO(TorchCheckpointIO):
    """A CheckpointIO defined where a training script would define it: the writer cannot import this module."""


@pytest.fixture
def writer() -> Iterator[WriterProcess]:
    process = WriterProcess()
    yield process
    process.close()


def _state() -> dict[str, object]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16), nn.BatchNorm1d(16))
    model[1].weight = model[0].weight  # tied
    return {
        "model": model.state_dict(),
        "rows": model[0].weight.detach()[2:5],  # a view of the tied storage
        "parameter": nn.Parameter(torch.ones(3)),
        "plain": {"step": 7, "names": ["a", "b"], "pair": (1, 2.5)},
        "empty": torch.empty(0),
    }


def test_a_staged_state_is_written_by_the_writer_as_torch_save_writes_the_original(
    tmp_path: Path, writer: WriterProcess
) -> None:
    state = _state()
    torch.save(state, tmp_path / "sync.pt")
    staging = SharedStaging()
    copy = staging.copy(state)
    state["model"]["0.weight"].add_(1)  # a later change of the original does not reach the copy
    writer.run(atomic_save, copy, str(tmp_path / "async.pt"), stagings=(staging,))
    saved, expected = (torch.load(tmp_path / name, weights_only=True) for name in ("async.pt", "sync.pt"))
    assert type(saved["model"]) is OrderedDict
    assert saved["model"]._metadata == expected["model"]._metadata
    for key, value in expected["model"].items():
        assert torch.equal(saved["model"][key], value), key
    assert torch.equal(saved["rows"], expected["rows"])
    assert type(saved["parameter"]) is nn.Parameter
    assert saved["plain"] == {"step": 7, "names": ["a", "b"], "pair": (1, 2.5)}
    assert saved["empty"].shape == (0,)
    weight, tied = saved["model"]["0.weight"], saved["model"]["1.weight"]
    assert weight.untyped_storage().data_ptr() == tied.untyped_storage().data_ptr(), "tied weights stay tied"
    assert saved["rows"].untyped_storage().data_ptr() == weight.untyped_storage().data_ptr(), "a view stays a view"
    assert os.path.getsize(tmp_path / "async.pt") < 1.2 * os.path.getsize(tmp_path / "sync.pt"), "one storage each"
    staging.close()


def test_the_next_copy_reuses_the_shared_memory_and_the_writer_reads_the_new_values(
    tmp_path: Path, writer: WriterProcess
) -> None:
    staging = SharedStaging()
    weights = {"w": torch.zeros(1000)}
    for step in range(3):
        weights["w"].fill_(step)
        copy = staging.copy(weights)
        arena = staging.arena
        writer.run(atomic_save, copy, str(tmp_path / "w.pt"), stagings=(staging,))
        assert torch.equal(torch.load(tmp_path / "w.pt", weights_only=True)["w"], torch.full((1000,), float(step)))
    assert staging.arena is arena
    staging.close()


def test_an_error_in_the_writer_is_raised_here_with_its_traceback_and_the_writer_goes_on(
    tmp_path: Path, writer: WriterProcess
) -> None:
    (tmp_path / "file").write_text("not a directory")
    staging = SharedStaging()
    copy = staging.copy({"w": torch.ones(4)})
    with pytest.raises(OSError) as raised:
        writer.run(atomic_save, copy, str(tmp_path / "file" / "w.pt"), stagings=(staging,))
    assert any("in the checkpoint writer process" in note for note in getattr(raised.value, "__notes__", []))
    assert not (tmp_path / "file" / "w.pt").exists()
    writer.run(atomic_save, copy, str(tmp_path / "w.pt"), stagings=(staging,))
    assert torch.equal(torch.load(tmp_path / "w.pt", weights_only=True)["w"], torch.ones(4))
    staging.close()


def test_a_writer_that_died_is_reported_with_its_exit_code(tmp_path: Path, writer: WriterProcess) -> None:
    os.kill(writer.pid, signal.SIGKILL)
    staging = SharedStaging()
    with pytest.raises(RuntimeError, match=rf"writer process \(pid {writer.pid}\) ended with exit code -9"):
        writer.run(atomic_save, staging.copy({"w": torch.ones(4)}), str(tmp_path / "w.pt"), stagings=(staging,))
    assert not (tmp_path / "w.pt").exists()
    staging.close()


def test_only_calls_that_the_writer_can_import_go_to_it() -> None:
    io = TorchCheckpointIO()
    assert runs_in_writer((atomic_save, ("path",), {}))
    assert runs_in_writer((io.save_checkpoint, ("path",), {}))
    assert not runs_in_writer((ScriptCheckpointIO().save_checkpoint, ("path",), {})), "beside the script"
    assert not runs_in_writer((atomic_save, (threading.Lock(),), {})), "cannot be pickled"


def test_a_folder_that_the_script_adds_to_sys_path_serves_the_writer(
    tmp_path: Path, writer: WriterProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a training script that extends sys.path as it runs (the writer started before), then saves through a
    # CheckpointIO from that folder
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "added_while_running.py").write_text(
        "from fabric_io import TorchCheckpointIO\n\n\nclass AddedCheckpointIO(TorchCheckpointIO):\n    pass\n"
    )
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path / "lib")])
    try:
        io = importlib.import_module("added_while_running").AddedCheckpointIO()
        assert runs_in_writer((io.save_checkpoint, ("path",), {}))
        staging = SharedStaging()
        writer.run(io.save_checkpoint, staging.copy({"w": torch.ones(4)}), str(tmp_path / "w.pt"), stagings=(staging,))
        assert torch.equal(torch.load(tmp_path / "w.pt", weights_only=True)["w"], torch.ones(4))
        staging.close()
    finally:
        sys.modules.pop("added_while_running", None)


def test_the_writer_variable_chooses_and_a_bad_value_names_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WRITER_VARIABLE, raising=False)
    assert writer_process_enabled()
    monkeypatch.setenv(WRITER_VARIABLE, "thread")
    assert not writer_process_enabled()
    monkeypatch.setenv(WRITER_VARIABLE, "fork")
    with pytest.raises(ValueError, match=r"FABRIC_CHECKPOINT_WRITER='fork'.*'process'.*'thread'"):
        writer_process_enabled()


def test_without_a_python_interpreter_to_start_the_saves_write_in_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WRITER_VARIABLE, raising=False)
    # a frozen application (PyInstaller): sys.executable starts the application, which would train all over again
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert not writer_process_enabled()
    monkeypatch.delattr(sys, "frozen")
    monkeypatch.setattr(sys, "executable", "")  # an embedding program without an interpreter to start
    assert not writer_process_enabled()


def test_close_ends_the_writer_while_a_forked_process_still_holds_its_socket(writer: WriterProcess) -> None:
    child = os.fork()  # like a DataLoader worker started after the first asynchronous save
    if child == 0:
        time.sleep(30)
        os._exit(0)
    try:
        started = time.monotonic()
        writer.close(timeout=20)
        assert not writer.alive()
        assert time.monotonic() - started < 10, "the writer saw its socket shut down"
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
