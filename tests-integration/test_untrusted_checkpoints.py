"""A checkpoint whose pickle payload would run code is refused by every load path, and the code never runs.

The payload: an object whose ``__reduce__`` tells the unpickler to call ``open(marker, "w")``, so unpickling it
creates a marker file, as a hostile checkpoint could run any command. Every way of loading is tried with the
default settings (the load must fail, the marker must not appear) and with an explicit ``weights_only=False``
(the payload then runs: proof that it is real and that the opt-out is what enables it):

- a single file: ``fabric.load`` (a local path and an fsspec URL) and ``fabric.load_raw``;
- a sharded FSDP directory (two processes): a payload in the ``.metadata`` file, and one in a non-tensor entry;
- ``fabric consolidate`` on both sharded directories (it has no opt-out; ``consolidate_sharded_checkpoint`` has);
- a DeepSpeed checkpoint directory, with the payload in its client state.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fabric_core import Fabric
from fabric_core.cli import main as fabric_cli
from fabric_strategies import FSDPStrategy, consolidate_sharded_checkpoint
from fabric_testing import RunIf, run_processes


class Payload:
    """Unpickling this object creates ``marker`` (the code a hostile checkpoint would run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def refused(load: Any, marker: Path) -> str:
    """Run ``load``, which must raise; return the error message. The payload must not have run."""
    with pytest.raises(Exception) as info:
        load()
    assert not marker.exists(), f"the payload ran (created {marker}) while loading with the default settings"
    return str(info.value)


def ran_with_opt_out(load: Any, marker: Path) -> None:
    """``load`` passes weights_only=False explicitly: the payload runs (whatever the load does afterwards)."""
    with contextlib.suppress(Exception):
        load()
    assert marker.exists(), "the payload did not run even with weights_only=False: the test checkpoint is not hostile"
    marker.unlink()


def test_single_file_checkpoints(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu", devices=1)
    model = fabric.setup(nn.Linear(3, 2))
    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"model": model.state_dict(), "extra": Payload(marker)}, hostile)
    raw = tmp_path / "raw-state-dict.pt"
    torch.save({**model.state_dict(), "extra": Payload(marker)}, raw)
    url = f"memory://{tmp_path.name}/hostile.ckpt"
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "extra": Payload(marker)}, buffer)
    import fsspec

    fsspec.filesystem("memory").pipe_file(url, buffer.getvalue())
    try:
        loads = {
            "load": lambda **kw: fabric.load(hostile, **kw),
            "load into a state": lambda **kw: fabric.load(hostile, {"model": model}, **kw),
            "load a URL": lambda **kw: fabric.load(url, **kw),
            "load_raw": lambda **kw: fabric.load_raw(raw, model, strict=False, **kw),
        }
        for name, load in loads.items():
            message = refused(load, marker)
            assert "weights_only" in message, f"{name}: the error does not say how to opt out: {message}"
            ran_with_opt_out(lambda load=load: load(weights_only=False), marker)
    finally:
        fsspec.filesystem("memory").rm(url)


# -- sharded FSDP checkpoints ---------------------------------------------------------------------------------------
def _fsdp(world_size: int) -> tuple[Fabric, Any]:
    fabric = Fabric(accelerator="cpu", devices=world_size, strategy=FSDPStrategy(timeout=timedelta(seconds=30)))
    torch.manual_seed(0)
    return fabric, fabric.setup(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)))


def _save_hostile_sharded(rank: int, world_size: int, directory: str, marker: str) -> None:
    """Two sharded checkpoints: one whose non-tensor entry is the payload, one whose metadata is replaced by it."""
    fabric, model = _fsdp(world_size)
    fabric.save(os.path.join(directory, "entry"), {"model": model, "extra": Payload(Path(marker))})
    fabric.save(os.path.join(directory, "metadata"), {"model": model, "step": 1})
    fabric.barrier()
    if rank == 0:
        with open(os.path.join(directory, "metadata", ".metadata"), "wb") as f:
            pickle.dump(Payload(Path(marker)), f)
    fabric.barrier()


def _load_sharded(rank: int, world_size: int, path: str, weights_only: bool | None) -> str | None:
    """Load ``path`` into a fresh FSDP model on every rank; return the error message (None when it loaded)."""
    fabric, model = _fsdp(world_size)
    try:
        fabric.load(path, {"model": model}, weights_only=weights_only)
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return None


@pytest.fixture(scope="module")
def hostile_sharded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("sharded")
    marker = directory / "ran"
    run_processes(_save_hostile_sharded, str(directory), str(marker), init_process_group=False, timeout=180)
    assert not marker.exists(), "saving must not run the payload"
    return directory, marker


@pytest.mark.parametrize("kind", ["entry", "metadata"])
def test_sharded_checkpoint_with_fabric_load(hostile_sharded: tuple[Path, Path], kind: str) -> None:
    directory, marker = hostile_sharded
    path = str(directory / kind)
    errors = run_processes(_load_sharded, path, None, init_process_group=False, timeout=180)
    assert not marker.exists(), f"the payload ran while loading the sharded checkpoint ({kind}) by default"
    for error in errors:
        assert error is not None, errors
        assert "weights_only" in error, errors
    if kind == "entry":  # the model loads; the hostile entry is the part left for the caller
        errors = run_processes(_load_sharded, path, False, init_process_group=False, timeout=180)
        assert marker.exists(), f"weights_only=False did not unpickle the entry: {errors}"
        marker.unlink()
    else:
        ran_with_opt_out(
            lambda: run_processes(_load_sharded, path, False, init_process_group=False, timeout=180), marker
        )


@pytest.mark.parametrize("kind", ["entry", "metadata"])
def test_sharded_checkpoint_with_fabric_consolidate(hostile_sharded: tuple[Path, Path], kind: str) -> None:
    directory, marker = hostile_sharded
    source, output = directory / kind, directory / f"{kind}.pt"
    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as info:
        fabric_cli(["consolidate", str(source), "--output-file", str(output)])
    assert info.value.code not in (0, None), stderr.getvalue()
    assert not marker.exists(), f"`fabric consolidate` ran the payload of the {kind} checkpoint"
    assert not output.exists()
    assert "refus" in stderr.getvalue().lower(), stderr.getvalue()
    # the library function refuses by default too, and needs the explicit opt-out
    refused(lambda: consolidate_sharded_checkpoint(source, output), marker)
    ran_with_opt_out(lambda: consolidate_sharded_checkpoint(source, output, weights_only=False), marker)


# -- DeepSpeed ------------------------------------------------------------------------------------------------------
def _deepspeed(rank: int, world_size: int, directory: str) -> dict[str, Any]:
    """Save a DeepSpeed checkpoint carrying the payload, then load it by default and with weights_only=False;
    report after each load whether the payload ran."""
    from fabric_strategies import DeepSpeedStrategy

    strategy = DeepSpeedStrategy(stage=2, timeout=timedelta(seconds=30))
    fabric = Fabric(accelerator="cpu", devices=world_size, strategy=strategy)
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    model, optimizer = fabric.setup(model, torch.optim.Adam(model.parameters()))
    marker = Path(directory) / "ran"
    state = {"model": model, "optimizer": optimizer, "extra": Payload(marker)}
    fabric.save(os.path.join(directory, "checkpoint"), state)
    fabric.barrier()
    outcome: dict[str, Any] = {"saved_ran": marker.exists()}
    for name, options in (("default", {}), ("opt_out", {"weights_only": False})):
        try:
            fabric.load(os.path.join(directory, "checkpoint"), {"model": model, "optimizer": optimizer}, **options)
            outcome[f"{name}_error"] = None
        except Exception as err:
            outcome[f"{name}_error"] = f"{type(err).__name__}: {err}"
        fabric.barrier()
        outcome[f"{name}_ran"] = marker.exists()
        fabric.barrier()
        if rank == 0 and marker.exists():
            marker.unlink()
        fabric.barrier()
    return outcome


@RunIf(deepspeed=True)
def test_deepspeed_checkpoint(tmp_path: Path) -> None:
    outcomes = run_processes(_deepspeed, str(tmp_path), world_size=1, init_process_group=False, timeout=300)
    outcome = outcomes[0]
    assert outcome["saved_ran"] is False
    assert outcome["opt_out_ran"] is True, outcome  # the payload is real, and the opt-out lets it run
    assert outcome["default_ran"] is False, f"the payload ran while loading by default: {outcome}"
    assert outcome["default_error"] is not None, outcome
    assert "weights_only" in outcome["default_error"], outcome
