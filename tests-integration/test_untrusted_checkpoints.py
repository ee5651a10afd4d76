"""A checkpoint whose pickle payload would run code is refused by every load path, and the code never runs.

The payload: an object whose ``__reduce__`` tells the unpickler to call ``open(marker, "w")``, so unpickling it
creates a marker file, as a hostile checkpoint could run any command. Every way of loading is tried with the
default settings (the load must fail, the marker must not appear) and with an explicit ``weights_only=False``
(the payload then runs: proof that it is real and that the opt-out is what enables it):

- a single file: ``fabric.load`` (a local path and an fsspec URL) and ``fabric.load_raw``;
- a sharded FSDP directory (two processes): a payload in the ``.metadata`` file, and one in a non-tensor entry;
- ``fabric consolidate`` on both sharded directories (it has no opt-out; ``consolidate_sharded_checkpoint`` has);
- a DeepSpeed checkpoint directory, with the payload in its client state;
- every public load entry point of the packages (found from their ``__all__``; a new one fails the test until it is
  in ``READERS``), on every format it reads: a payload in a single file, in a sharded directory's metadata or in one
  of its entries, and a sharded directory whose files lead outside it (``..``, an absolute path, symbolic links),
  which is refused with ``weights_only=False`` too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import io
import os
import pickle
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fabric_core import Fabric
from fabric_core.cli import main as fabric_cli
from fabric_io import METADATA_FILE, save_sharded_checkpoint
from fabric_strategies import FSDPStrategy, consolidate_sharded_checkpoint
from fabric_testing import PicklePayload, RunIf, run_processes
from fabric_utils import DEEPSPEED


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
    torch.save({"model": model.state_dict(), "extra": PicklePayload(marker)}, hostile)
    raw = tmp_path / "raw-state-dict.pt"
    torch.save({**model.state_dict(), "extra": PicklePayload(marker)}, raw)
    url = f"memory://{tmp_path.name}/hostile.ckpt"
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "extra": PicklePayload(marker)}, buffer)
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
    fabric.save(os.path.join(directory, "entry"), {"model": model, "extra": PicklePayload(Path(marker))})
    fabric.save(os.path.join(directory, "metadata"), {"model": model, "step": 1})
    fabric.save(os.path.join(directory, "escape"), {"model": model, "step": 1})
    fabric.barrier()
    if rank == 0:
        with open(os.path.join(directory, "metadata", ".metadata"), "wb") as f:
            pickle.dump(PicklePayload(Path(marker)), f)
        lead_out(Path(directory, "escape"), "../entry/{}")  # the shards of another checkpoint
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


def test_sharded_checkpoint_leading_outside_with_fabric_load(hostile_sharded: tuple[Path, Path]) -> None:
    directory, _ = hostile_sharded
    for weights_only in (None, False):  # the opt-out does not open files outside the checkpoint either
        errors = run_processes(_load_sharded, str(directory / "escape"), weights_only, init_process_group=False)
        for error in errors:
            assert error is not None, errors
            assert "outside the checkpoint directory" in error, errors
            assert "'../entry/__" in error, f"the error does not name the entry: {errors}"
            assert repr(str(directory / "escape")) in error, f"the error does not name the checkpoint: {errors}"


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
    state = {"model": model, "optimizer": optimizer, "extra": PicklePayload(marker)}
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


# -- every public load entry point ----------------------------------------------------------------------------------
PACKAGES = (
    "fabric_utils",
    "fabric_accelerators",
    "fabric_environments",
    "fabric_io",
    "fabric_precision",
    "fabric_strategies",
    "fabric_loggers",
    "fabric_core",
    "fabric_testing",
)
LOAD_LIKE = re.compile(r"(^|_)(load|read|consolidate)(_|$)")
#: methods with a load-like name that take objects already in memory and open no file
NOT_READERS = {
    "load_state_dict": "restores a state dict the caller already holds (read by one of the READERS)",
    "load_module_state_dict": "the strategy's half of load_state_dict: restores a state dict already in memory",
}
FILE = ("file",)
PAYLOADS = ("sharded-metadata", "sharded-entry")
ESCAPES = ("sharded-parent", "sharded-absolute", "sharded-symlink", "sharded-metadata-symlink")
SHARDED = (*PAYLOADS, *ESCAPES)
XLA_SHARDS = "packages/fabric-strategies/tests/xla/test_xla_fsdp.py::test_hostile_shards_are_refused"


def public_load_entry_points() -> set[str]:
    """``package.name`` of every public function, and ``package.Class.method`` of every public method (defined by a
    fabric package, inherited ones included), whose name says it loads, reads or consolidates."""
    found: set[str] = set()
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj):
                for attr in dir(obj):
                    owner = next((c for c in obj.__mro__ if attr in vars(c)), None)
                    if attr.startswith("_") or not LOAD_LIKE.search(attr) or owner is None:
                        continue
                    if owner.__module__.startswith("fabric_") and attr not in NOT_READERS:
                        found.add(f"{package}.{name}.{attr}")
            elif callable(obj) and LOAD_LIKE.search(name):
                found.add(f"{package}.{name}")
    return found


@dataclasses.dataclass(frozen=True)
class Reader:
    """How to call one entry point on a checkpoint path (``options`` is ``{}`` or ``{"weights_only": False}``), the
    formats it reads that are tried here, and where its other formats are tried (test name -> formats)."""

    call: Callable[[Path, dict[str, Any]], Any]
    formats: tuple[str, ...]
    elsewhere: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    needs: str | None = None


def _xla(build: Callable[[], Any]) -> Any:
    from fabric_utils import override_hardware

    with override_hardware(xla_available=True):  # the file path of these objects needs no XLA device
        return build()


def _strategy(build: Callable[[], Any]) -> Callable[[Path, dict[str, Any]], Any]:
    return lambda path, options: build().load_checkpoint(path, **options)


def _async_load(path: Path, options: dict[str, Any]) -> Any:
    from fabric_io import AsyncCheckpointIO

    checkpoint_io = AsyncCheckpointIO()
    try:
        return checkpoint_io.load_checkpoint(path, **options)
    finally:
        checkpoint_io.teardown()


def _readers() -> dict[str, Reader]:
    import fabric_io
    import fabric_strategies as fs

    template = {"model": {"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}, "extra": None}
    strategies_on_files = {
        "DDPStrategy": fs.DDPStrategy,
        "DataParallelStrategy": fs.DataParallelStrategy,
        "ParallelStrategy": fs.ParallelStrategy,
        "SingleDeviceStrategy": fs.SingleDeviceStrategy,
        "XLAStrategy": lambda: _xla(fs.XLAStrategy),
        "SingleDeviceXLAStrategy": lambda: _xla(fs.SingleDeviceXLAStrategy),
    }
    readers = {
        f"fabric_strategies.{name}.load_checkpoint": Reader(_strategy(build), FILE)
        for name, build in strategies_on_files.items()
    }
    return readers | {
        "fabric_io.TorchCheckpointIO.load_checkpoint": Reader(
            lambda p, o: fabric_io.TorchCheckpointIO().load_checkpoint(p, **o), FILE
        ),
        "fabric_io.XLACheckpointIO.load_checkpoint": Reader(
            lambda p, o: _xla(fabric_io.XLACheckpointIO).load_checkpoint(p, **o), FILE
        ),
        "fabric_io.AsyncCheckpointIO.load_checkpoint": Reader(_async_load, FILE),
        "fabric_io.load_sharded_checkpoint": Reader(
            lambda p, o: fabric_io.load_sharded_checkpoint(dict(template), p, **o), SHARDED
        ),
        "fabric_io.read_sharded_metadata": Reader(
            lambda p, o: fabric_io.read_sharded_metadata(p, **o), ("sharded-metadata", *ESCAPES)
        ),
        "fabric_strategies.read_sharded_checkpoint": Reader(lambda p, o: fs.read_sharded_checkpoint(p, **o), SHARDED),
        "fabric_strategies.consolidate_sharded_checkpoint": Reader(
            lambda p, o: fs.consolidate_sharded_checkpoint(p, p.parent / f"{p.name}.pt", **o), SHARDED
        ),
        "fabric_strategies.FSDPStrategy.load_checkpoint": Reader(
            _strategy(FSDPStrategy),
            ("file", *SHARDED),
            {"test_sharded_checkpoint_with_fabric_load": PAYLOADS},
        ),
        "fabric_strategies.ModelParallelStrategy.load_checkpoint": Reader(
            _strategy(lambda: fs.ModelParallelStrategy(parallelize_fn=lambda module, mesh: module)),
            ("file", *SHARDED),
        ),
        "fabric_strategies.DeepSpeedStrategy.load_checkpoint": Reader(
            _strategy(fs.DeepSpeedStrategy), FILE, {"test_deepspeed_checkpoint": ("deepspeed",)}, needs="deepspeed"
        ),
        "fabric_strategies.XLAFSDPStrategy.load_checkpoint": Reader(
            _strategy(lambda: _xla(fs.XLAFSDPStrategy)), FILE, {XLA_SHARDS: ("xla-shards",)}
        ),
        "fabric_core.Fabric.load": Reader(
            lambda p, o: Fabric(accelerator="cpu", devices=1).load(p, **o),
            FILE,
            {
                "test_sharded_checkpoint_with_fabric_load": PAYLOADS,
                "test_sharded_checkpoint_leading_outside_with_fabric_load": ("sharded-parent",),
                "test_deepspeed_checkpoint": ("deepspeed",),
            },
        ),
        "fabric_core.Fabric.load_raw": Reader(
            lambda p, o: Fabric(accelerator="cpu", devices=1).load_raw(p, nn.Linear(3, 2), strict=False, **o), FILE
        ),
    }


READERS = _readers()
#: abstract classes: what they define runs through their concrete subclasses in READERS
ABSTRACT = {
    "fabric_io.CheckpointIO.load_checkpoint",
    "fabric_strategies.ShardedStrategy.load_checkpoint",
    "fabric_strategies.Strategy.load_checkpoint",
}
CASES = [(name, kind) for name, reader in sorted(READERS.items()) for kind in reader.formats]


def test_every_public_load_entry_point_is_in_the_table() -> None:
    found = public_load_entry_points()
    for name in ABSTRACT:
        package, cls, _ = name.split(".")
        assert inspect.isabstract(getattr(importlib.import_module(package), cls)), f"{name} is not abstract"
    missing = sorted(found - set(READERS) - ABSTRACT)
    assert not missing, (
        f"New public load entry points {missing}: add each to READERS (how to call it on a hostile checkpoint, the"
        " formats it reads), or to NOT_READERS if it opens no file."
    )
    stale = sorted((set(READERS) | ABSTRACT) - found)
    assert not stale, f"READERS names entry points that are no longer public: {stale}"
    for name, reader in READERS.items():
        for test in reader.elsewhere:
            if "::" in test:
                file, function = test.split("::")
                assert f"def {function}(" in (Path(__file__).parents[1] / file).read_text(), f"{name}: {test} is gone"
            else:
                assert callable(globals().get(test)), f"{name}: {test} is not a test of this module"


def _lead_out(path: Path, how: str, other: Path) -> None:
    shard = next(name for name in sorted(os.listdir(other)) if name.endswith(".distcp"))
    if how == "sharded-parent":
        lead_out(path, f"../{other.name}/{{}}")
    elif how == "sharded-absolute":
        lead_out(path, str(other) + "/{}")
    elif how == "sharded-symlink":
        os.remove(path / shard)
        os.symlink(other / shard, path / shard)
    else:
        os.remove(path / METADATA_FILE)
        os.symlink(other / METADATA_FILE, path / METADATA_FILE)


def lead_out(path: Path, pattern: str) -> None:
    """Rewrite the metadata of the sharded checkpoint ``path`` so that each entry is read from ``pattern`` filled
    with the name of its own storage file (``"../other/{}"``)."""
    with open(path / METADATA_FILE, "rb") as file:
        metadata = pickle.load(file)  # a checkpoint this test wrote: trusted
    metadata.storage_data = {
        index: dataclasses.replace(info, relative_path=pattern.format(info.relative_path))
        for index, info in metadata.storage_data.items()
    }
    with open(path / METADATA_FILE, "wb") as file:
        pickle.dump(metadata, file)


@pytest.fixture(scope="module")
def hostile_formats(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One hostile checkpoint per format in ``root`` (named after it), the payloads' ``marker``; ``other`` is the
    checkpoint the escapes lead into."""
    root = tmp_path_factory.mktemp("formats")
    marker = root / "ran"

    def state(extra: Any) -> dict[str, Any]:
        return {"model": {"weight": torch.ones(2, 3), "bias": torch.ones(2)}, "extra": extra}

    torch.save(state(PicklePayload(marker)), root / "file")
    save_sharded_checkpoint(state(PicklePayload(marker)), root / "sharded-entry")
    save_sharded_checkpoint(state(1), root / "sharded-metadata")
    (root / "sharded-metadata" / METADATA_FILE).write_bytes(pickle.dumps(PicklePayload(marker)))
    save_sharded_checkpoint(state(7), root / "other")
    for how in ESCAPES:
        save_sharded_checkpoint(state(0), root / how)
        _lead_out(root / how, how, root / "other")
    assert not marker.exists(), "writing the checkpoints must not run the payload"
    return root, marker


@pytest.mark.parametrize(("name", "kind"), CASES, ids=[f"{name}-{kind}" for name, kind in CASES])
def test_every_public_load_entry_point_refuses_by_default(
    hostile_formats: tuple[Path, Path], name: str, kind: str
) -> None:
    reader = READERS[name]
    if reader.needs == "deepspeed" and not DEEPSPEED.available:
        pytest.skip("needs deepspeed")
    root, marker = hostile_formats
    path = root / kind
    message = refused(lambda: reader.call(path, {}), marker)
    if kind in ESCAPES:
        assert "outside the checkpoint directory" in message, f"{name}: {message}"
        assert repr(str(path)) in message, f"{name}: the error does not name the checkpoint: {message}"
        # the opt-out unpickles, but never opens files outside the checkpoint either
        assert "outside the checkpoint directory" in refused(lambda: reader.call(path, {"weights_only": False}), marker)
    else:
        assert "weights_only" in message, f"{name}: the error does not say how to opt out: {message}"
        ran_with_opt_out(lambda: reader.call(path, {"weights_only": False}), marker)
