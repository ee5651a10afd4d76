"""Bad checkpoint input ends in a clear error that names the bad value, the state entry or the file (issue #14).

A second table beside ``test_bad_input.py``'s, in its style: each row is one mistake or failure of ``fabric.save``,
``fabric.load`` or ``fabric.load_raw``, the exception it must raise and fragments of the message (all must appear).
Saves that fail leave nothing behind: no new file in the directory, the previous checkpoint unchanged. Then a full
disk, on one device and under DDP on two processes (a real 2 MiB tmpfs; skipped where mounting is not permitted).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fabric_core import Fabric
from fabric_testing import DistributedTestError, run_processes


def _fresh(fabric: Fabric) -> tuple[Any, Any]:
    model = nn.Linear(4, 2)
    return fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))


class Context:
    """A single-device Fabric with a set-up model and optimizer, a good checkpoint, paths that cannot be saved to."""

    def __init__(self, directory: Path) -> None:
        self.dir, self.checkpoint = directory, str(directory / "good.ckpt")
        self.fabric = Fabric(accelerator="cpu", devices=1)
        self.model, self.optimizer = _fresh(self.fabric)
        self.fabric.save(self.checkpoint, {"model": self.model, "optimizer": self.optimizer, "step": 3})
        torch.save(nn.Linear(4, 2).state_dict(), directory / "raw.pt")
        (directory / "a-file").write_text("not a directory")
        (directory / "a-directory").mkdir()
        self.listing = sorted(os.listdir(directory))
        self.checkpoint_bytes = Path(self.checkpoint).read_bytes()

    def state(self, **extra: Any) -> dict[str, Any]:
        return {"model": self.model, "step": 4, **extra}

    def other_model(self, module: nn.Module) -> Any:
        return self.fabric.setup(module)


def _local_function() -> Callable[[Any], Any]:
    return lambda x: x


def _local_class_instance() -> object:
    class Config:
        lr = 0.1

    return Config()


def _optimizer_of_other_groups(c: Context) -> Any:
    module = nn.Linear(4, 2)
    optimizer = torch.optim.SGD([{"params": [module.weight]}, {"params": [module.bias]}], lr=0.1)
    return c.fabric.setup(module, optimizer)[1]


# name, call, exception, fragments the message must name
CHECKPOINT_CASES: list[tuple[str, Callable[[Context], Any], type[Exception], list[str]]] = [
    # the path
    ("save None path", lambda c: c.fabric.save(None, c.state()), TypeError, ["fabric.save(path=...)", "got None"]),
    ("save int path", lambda c: c.fabric.save(7, c.state()), TypeError, ["got 7 of type int"]),
    ("save bytes path", lambda c: c.fabric.save(b"x.ckpt", c.state()), TypeError, ["b'x.ckpt'"]),
    ("save empty path", lambda c: c.fabric.save("", c.state()), ValueError, ["empty path ''"]),
    ("save swapped", lambda c: c.fabric.save(c.state(), c.checkpoint), TypeError, ["path first", "save(path, state)"]),
    (
        "save under a file",
        lambda c: c.fabric.save(str(c.dir / "a-file" / "x.ckpt"), c.state()),
        NotADirectoryError,
        ["a-file' is a file, not a directory", "x.ckpt"],
    ),
    (
        "save deep under a file",
        lambda c: c.fabric.save(str(c.dir / "a-file" / "run" / "x.ckpt"), c.state()),
        NotADirectoryError,
        ["a-file' is a file"],
    ),
    (
        "save onto a directory",
        lambda c: c.fabric.save(str(c.dir / "a-directory"), c.state()),
        IsADirectoryError,
        ["a-directory': it is a directory"],
    ),
    # the state
    ("save None state", lambda c: c.fabric.save(c.checkpoint, None), TypeError, ["fabric.save(state=...)", "None"]),
    ("save str state", lambda c: c.fabric.save(c.checkpoint, "model"), TypeError, ["'model' of type str"]),
    (
        "save a lambda",
        lambda c: c.fabric.save(c.checkpoint, c.state(extra={"fn": lambda x: x})),
        TypeError,
        ["state['extra']['fn'] cannot be pickled", "<lambda>", "good.ckpt"],
    ),
    (
        "save a local function",
        lambda c: c.fabric.save(c.checkpoint, c.state(hooks=[print, _local_function()])),
        TypeError,
        ["state['hooks'][1] cannot be pickled"],
    ),
    (
        "save a local class instance",
        lambda c: c.fabric.save(c.checkpoint, c.state(config=_local_class_instance())),
        TypeError,
        ["state['config'] cannot be pickled", "Config"],
    ),
    (
        "save a lock",
        lambda c: c.fabric.save(c.checkpoint, c.state(sync=({"lock": threading.Lock()},))),
        TypeError,
        ["state['sync'][0]['lock'] cannot be pickled", "lock"],
    ),
    (
        "save a generator",
        lambda c: c.fabric.save(c.checkpoint, c.state(data=(i for i in range(3)))),
        TypeError,
        ["state['data'] cannot be pickled", "generator"],
    ),
    # loads
    ("load None path", lambda c: c.fabric.load(None), TypeError, ["fabric.load(path=...)", "got None"]),
    ("load swapped", lambda c: c.fabric.load({"model": c.model}, c.checkpoint), TypeError, ["path first"]),
    ("load_raw None", lambda c: c.fabric.load_raw(None, c.model), TypeError, ["fabric.load_raw(path=...)", "None"]),
    ("load_raw swapped", lambda c: c.fabric.load_raw(c.model, c.checkpoint), TypeError, ["load_raw(path, obj)"]),
    (
        "load under a file",
        lambda c: c.fabric.load(str(c.dir / "a-file" / "x.ckpt")),
        FileNotFoundError,
        ["a-file/x.ckpt"],
    ),
    (
        "load strict missing keys",
        lambda c: c.fabric.load(c.checkpoint, {"model": c.other_model(nn.Sequential(nn.Linear(4, 2)))}),
        RuntimeError,
        ["state['model']", "good.ckpt", 'Missing key(s) in state_dict: "0.weight"'],
    ),
    (
        "load strict unexpected keys",
        lambda c: c.fabric.load(c.checkpoint, {"model": c.other_model(nn.Linear(4, 2, bias=False))}),
        RuntimeError,
        ["state['model']", "good.ckpt", 'Unexpected key(s) in state_dict: "bias"'],
    ),
    (
        "load wrong shapes",
        lambda c: c.fabric.load(c.checkpoint, {"model": c.other_model(nn.Linear(4, 3))}),
        RuntimeError,
        ["state['model']", "good.ckpt", "size mismatch for weight"],
    ),
    (
        "load wrong shapes not strict",
        lambda c: c.fabric.load(c.checkpoint, {"model": c.other_model(nn.Linear(5, 2))}, strict=False),
        RuntimeError,
        ["state['model']", "size mismatch"],
    ),
    (
        "load optimizer of other groups",
        lambda c: c.fabric.load(c.checkpoint, {"optimizer": _optimizer_of_other_groups(c)}),
        ValueError,
        ["state['optimizer']", "good.ckpt", "parameter groups"],
    ),
    (
        "load_raw wrong shapes",
        lambda c: c.fabric.load_raw(str(c.dir / "raw.pt"), c.other_model(nn.Linear(4, 5))),
        RuntimeError,
        ["the Linear module", "raw.pt", "size mismatch"],
    ),
    (
        "load_raw a checkpoint dict",
        lambda c: c.fabric.load_raw(c.checkpoint, c.other_model(nn.Linear(4, 2))),
        RuntimeError,
        ["the Linear module", "good.ckpt", "Unexpected key(s)"],
    ),
]


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Context:
    return Context(tmp_path_factory.mktemp("bad-checkpoint-input"))


@pytest.mark.parametrize(
    ("call", "error", "names"),
    [pytest.param(call, error, names, id=name) for name, call, error, names in CHECKPOINT_CASES],
)
def test_bad_checkpoint_input(context: Context, call: Callable[[Context], Any], error: type, names: list[str]) -> None:
    with pytest.raises(error) as info:
        call(context)
    assert type(info.value) is error, f"expected {error.__name__}, got {type(info.value).__name__}: {info.value}"
    for fragment in names:
        assert fragment in str(info.value), f"the message does not name {fragment!r}: {info.value}"
    # nothing was written: no temporary or new file, the previous checkpoint unchanged
    assert sorted(os.listdir(context.dir)) == context.listing
    assert Path(context.checkpoint).read_bytes() == context.checkpoint_bytes


def test_the_table_holds_at_least_twenty_five_cases() -> None:
    assert len(CHECKPOINT_CASES) >= 25


# -- a full disk ----------------------------------------------------------------------------------------------------
def test_a_full_disk_on_one_device_says_so_and_keeps_the_previous_checkpoint(small_disk: Path) -> None:
    fabric = Fabric(accelerator="cpu", devices=1)
    path = small_disk / "last.ckpt"
    fabric.save(path, {"step": 1})
    with pytest.raises(OSError, match=r"No space left on device while saving '.*last\.ckpt'") as info:
        fabric.save(path, {"model": nn.Linear(1000, 1000), "step": 2})  # 4 MB on a 2 MiB disk
    assert info.value.errno == errno.ENOSPC
    assert "inline_container" not in str(info.value)
    assert os.listdir(small_disk) == ["last.ckpt"]
    assert fabric.load(path) == {"step": 1}


def _save_big_under_ddp(rank: int, world_size: int, directory: str) -> None:
    fabric = Fabric(accelerator="cpu", devices=world_size, strategy="ddp")
    fabric.launch()
    path = os.path.join(directory, "last.ckpt")
    fabric.save(path, {"step": 1})
    fabric.save(path, {"model": nn.Linear(1000, 1000), "step": 2})


def test_a_full_disk_under_ddp_names_the_path_on_rank_zero(small_disk: Path) -> None:
    with pytest.raises(DistributedTestError) as info:
        run_processes(_save_big_under_ddp, str(small_disk), init_process_group=False, timeout=120)
    report = str(info.value)
    assert "No space left on device while saving" in report, report
    assert "last.ckpt" in report, report
    assert os.listdir(small_disk) == ["last.ckpt"]
    assert torch.load(small_disk / "last.ckpt", weights_only=True) == {"step": 1}
