"""``fabric consolidate``: a sharded checkpoint written by 2 processes becomes one file that loads weights-only."""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from fabric_core.cli import main
from fabric_testing import run_processes

FULL_WEIGHT = torch.arange(24, dtype=torch.float32).reshape(6, 4)


def _save_sharded(rank: int, world_size: int, directory: str) -> None:
    """Each of the 2 ranks holds half of the weight (a DTensor sharded on dim 0) and writes its own shard."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world_size,))
    weight = distribute_tensor(FULL_WEIGHT.clone(), mesh, [Shard(0)])
    state = {"model": {"weight": weight, "bias": torch.ones(2)}, "step": 7, "meta": {"names": ["a", "b"]}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=directory)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("sharded") / "checkpoint"
    run_processes(_save_sharded, str(directory))
    assert len(list(directory.glob("*.distcp"))) == 2
    return directory


def check_full(state: dict[str, Any]) -> None:
    assert torch.equal(state["model"]["weight"], FULL_WEIGHT)
    assert torch.equal(state["model"]["bias"], torch.ones(2))
    assert state["step"] == 7
    assert state["meta"] == {"names": ["a", "b"]}


def test_consolidate_writes_one_weights_only_file(
    sharded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "full.pt"
    with pytest.raises(SystemExit) as info:
        main(["consolidate", str(sharded), "--output-file", str(output)])
    assert info.value.code == 0
    assert str(output) in capsys.readouterr().out
    check_full(torch.load(output, weights_only=True))
    assert sorted(os.listdir(tmp_path)) == ["full.pt"]  # no temporary file left behind


def _copy(sharded: Path, target: Path) -> Path:
    target.mkdir()
    for item in sharded.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    return target


def test_default_output_sits_next_to_the_directory(
    sharded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = _copy(sharded, tmp_path / "ckpt")
    with pytest.raises(SystemExit) as info:
        main(["consolidate", str(copy)])
    assert info.value.code == 0
    written = str(copy) + ".consolidated"
    assert written in capsys.readouterr().out
    check_full(torch.load(written, weights_only=True))


class Exploit:
    """Unpickling this runs ``os.system``-like code: here it creates a file as proof."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (open, (self.marker, "w"))


def _refused(source: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """``fabric consolidate source`` must fail with exit code 1 and write nothing; return its error output."""
    with pytest.raises(SystemExit) as info:
        main(["consolidate", str(source)])
    assert info.value.code == 1
    assert not Path(f"{source}.consolidated").exists()
    return capsys.readouterr().err


def test_metadata_carrying_a_payload_is_refused_without_running_it(
    sharded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evil = _copy(sharded, tmp_path / "evil")
    marker = tmp_path / "payload-ran"
    (evil / ".metadata").write_bytes(pickle.dumps(Exploit(str(marker))))
    err = _refused(evil, capsys)
    assert re.search(r"(io|builtins)\.open", err), err
    assert "weights_only=False" in err  # the way out, for a checkpoint the user trusts, is named
    assert not marker.exists()


def test_entries_that_are_not_plain_data_are_refused_without_running_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch.distributed.checkpoint as dcp

    marker = tmp_path / "payload-ran"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.ones(2), "obj": Exploit(str(marker))}, checkpoint_id=str(tmp_path / "ckpt"), no_dist=True)
    assert not marker.exists()  # saving pickles the object without running it
    err = _refused(tmp_path / "ckpt", capsys)
    assert re.search(r"'obj'.*open", err), err
    assert not marker.exists()


def test_bad_directories_exit_2_with_one_line(
    sharded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "__0_0.distcp").write_bytes(b"partial")
    corrupt = _copy(sharded, tmp_path / "corrupt")
    for shard in corrupt.glob("*.distcp"):
        shard.write_bytes(shard.read_bytes()[:100])
    cases = ((tmp_path / "missing", "not found"), (incomplete, "incomplete"), (corrupt, "failed"))
    for target, expected in cases:
        with pytest.raises(SystemExit) as info:
            main(["consolidate", str(target)])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert expected in err[0]
        assert str(target) in err[0]
