"""``stage_on_cpu`` takes a copy that later changes do not reach; ``BackgroundSave`` writes it in one worker thread."""

from __future__ import annotations

import os
import sys
import threading
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from fabric_io import BackgroundSave, CpuStaging, atomic_save, stage_on_cpu
from fabric_io.background import BACKGROUND_NICENESS


def test_the_copy_keeps_values_structure_and_shared_memory_and_ignores_later_changes() -> None:
    weight = torch.arange(6.0).reshape(2, 3)
    state = {
        "model": OrderedDict(weight=weight, tied=weight, half=torch.ones(3, dtype=torch.bfloat16)),
        "notes": {"losses": [0.5, 0.25], "name": "run"},
        "step": 7,
    }
    copy = stage_on_cpu(state)
    weight.add_(100)  # what training does right after a save
    state["notes"]["losses"].append(0.1)
    state["step"] = 8
    assert torch.equal(copy["model"]["weight"], torch.arange(6.0).reshape(2, 3))
    assert copy["model"]["half"].dtype == torch.bfloat16
    assert copy["model"]["weight"].data_ptr() == copy["model"]["tied"].data_ptr(), "tied tensors stay tied"
    assert type(copy["model"]) is OrderedDict
    assert copy["notes"] == {"losses": [0.5, 0.25], "name": "run"}
    assert copy["step"] == 7


def test_an_object_that_cannot_be_copied_is_named() -> None:
    with pytest.raises(TypeError, match=r"lock.*save synchronously"):
        stage_on_cpu({"lock": threading.Lock()})


def test_the_save_runs_in_a_non_daemon_thread_and_wait_returns_once_it_is_written(tmp_path: Path) -> None:
    started, release = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def write(obj: dict[str, torch.Tensor], path: Path) -> None:
        seen["daemon"] = threading.current_thread().daemon
        started.set()
        assert release.wait(timeout=30)
        atomic_save(obj, path)

    target = tmp_path / "ckpt.pt"
    save = BackgroundSave(write, {"w": torch.ones(2)}, target, path=str(target))
    assert started.wait(timeout=30)
    assert not save.done()
    assert not target.exists()
    release.set()
    save.wait()
    assert save.done()
    assert seen["daemon"] is False
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))
    save.wait()  # waiting again is fine


def test_an_error_is_raised_by_the_first_wait_only_with_the_path_in_a_note(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    target = blocker / "ckpt.pt"
    save = BackgroundSave(atomic_save, {"w": torch.ones(2)}, target, path=str(target))
    with pytest.raises(NotADirectoryError) as info:
        save.wait()
    assert any(str(target) in note for note in info.value.__notes__)
    save.wait()  # raised once


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are a Linux feature")
def test_the_writer_runs_at_a_lower_cpu_priority() -> None:
    priorities: list[int] = []

    def record() -> None:
        priorities.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    caller = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    BackgroundSave(record, path="nothing").wait()
    assert priorities == [min(caller + BACKGROUND_NICENESS, 19)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == caller, "the caller keeps its own"


def test_cpu_staging_reuses_its_buffers_for_the_next_copy_of_the_same_tensors() -> None:
    weight = torch.zeros(1000)
    staging = CpuStaging()
    first = staging.copy({"w": weight})["w"]
    pointer = first.data_ptr()
    weight.add_(1)
    second = staging.copy({"w": weight})["w"]
    assert second.data_ptr() == pointer, "the second copy went into the first copy's memory"
    assert torch.equal(second, torch.ones(1000))
    staging.close()
    assert staging.copy({"w": weight})["w"].data_ptr() != weight.data_ptr()
