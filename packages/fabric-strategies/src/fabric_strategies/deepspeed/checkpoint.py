"""Checkpoints of a DeepSpeed engine in DeepSpeed's own format, with the rest of fabric's state as client state.

DeepSpeed reads its files with ``torch.load(weights_only=False)``: a crafted checkpoint would run code. So before a
load hands a directory to DeepSpeed, every torch file of the checkpoint tag it will read is first read with
``torch.load(weights_only=True)`` (memory-mapped: only the pickled structure is parsed), which allows tensors, plain
data and the few DeepSpeed records its ZeRO checkpoints hold (``_DEEPSPEED_RECORDS``); anything else refuses the load
with ``UnsafeCheckpointError`` naming the file. ``weights_only=False`` skips the check.

Either way the tag that ``latest`` names, and every file under it, must lie inside the checkpoint directory (symbolic
links followed): a ``latest`` of ``../other_run/checkpoint`` would make DeepSpeed load another checkpoint.
"""

from __future__ import annotations

import importlib
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from fabric_io import UnsafeCheckpointError, is_remote_path, refused_global, resolve_inside
from fabric_strategies.checkpoint import (
    CheckpointingStrategy,
    StateFilter,
    check_strict_keys,
    loading,
    restore_state,
    to_checkpoint,
)
from fabric_utils import DEEPSPEED, PathLike


class DeepSpeedEngines(CheckpointingStrategy, Protocol):
    """What these checkpoints need of ``DeepSpeedStrategy``: its ZeRO stage and the engines it created."""

    @property
    def zero_stage(self) -> int: ...

    @property
    def engines(self) -> list[Any]: ...


#: the tag (sub-directory) fabric saves under; ``latest`` points to it, so DeepSpeed's tools find it too
CHECKPOINT_TAG = "checkpoint"
#: the client-state entry that records which keys of the saved state the engine itself holds
ENGINE_KEYS_ENTRY = "_fabric_deepspeed_engine_keys"
#: the DeepSpeed classes that ZeRO checkpoints hold besides tensors and plain data (the loss scaler, the ZeRO stage,
#: each parameter's fragment address). Unpickling them builds an empty instance and sets its attributes, or looks up
#: an enum member: none of them runs code of the checkpoint. Missing ones (other DeepSpeed versions) are skipped.
_DEEPSPEED_RECORDS = (
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)


@dataclass(frozen=True)
class EngineEntries:
    """Where a DeepSpeed engine and its optimizer appear in a user's ``state`` dict."""

    engine: Any
    model_key: str
    optimizer_keys: tuple[str, ...]

    @property
    def keys(self) -> set[str]:
        return {self.model_key, *self.optimizer_keys}


def find_engine(engines: Sequence[Any], obj: Any) -> Any | None:
    """The engine among ``engines`` that is ``obj`` or wraps the module ``obj``; ``None`` otherwise."""
    for engine in engines:
        if obj is engine or obj is getattr(engine, "module", None):
            return engine
    return None


def holds_engine(engines: Sequence[Any], state: Any) -> bool:
    """Whether the ``state`` dict holds one of ``engines`` (or a module one of them wraps)."""
    return isinstance(state, Mapping) and any(find_engine(engines, obj) is not None for obj in state.values())


def with_full_module_states(strategy: DeepSpeedEngines, state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` (a state without an engine, e.g. ``{"model": model.state_dict()}``) with each entry that is the
    state dict of a ZeRO-3 model (the same keys) replaced by the full one gathered from every process.

    ZeRO-3 keeps only a shard of each parameter on a process: its own ``state_dict()`` holds empty placeholders.
    Every process must call this (the gathering is collective); their states have the same keys, so they decide
    alike. Under ZeRO-1/2 each process holds the full parameters and ``state`` is returned as it is.
    """
    result = dict(state)
    if strategy.zero_stage != 3:
        return result
    for engine in strategy.engines:
        names = set(engine.module.state_dict())
        matching = [key for key, value in state.items() if isinstance(value, Mapping) and set(value) == names]
        if matching:
            full = strategy.get_module_state_dict(engine)
            result.update(dict.fromkeys(matching, full))
    return result


def is_engine_optimizer(engine: Any, obj: Any) -> bool:
    """Whether ``obj`` is the engine's optimizer: DeepSpeed's wrapper or the optimizer it wraps."""
    candidates = (getattr(engine, "optimizer", None), getattr(engine, "basic_optimizer", None))
    return obj is not None and any(obj is candidate for candidate in candidates)


def engine_entries(engines: Sequence[Any], state: Mapping[str, Any], action: str) -> EngineEntries:
    """Locate the one engine in ``state`` (and its optimizer); raise ``ValueError`` for none or several."""
    if not isinstance(state, Mapping):
        raise TypeError(f"`state` must be a dict of names to objects, got {type(state).__name__}")
    found = [(key, engine) for key, obj in state.items() if (engine := find_engine(engines, obj)) is not None]
    if not found:
        raise ValueError(
            f"DeepSpeedStrategy cannot {action} a checkpoint without a model it set up: the state holds"
            f" {sorted(map(str, state))}. Pass the model returned by setup, e.g. `{{'model': model, 'optimizer':"
            " optimizer, ...}`."
        )
    if len(found) > 1:
        raise ValueError(
            "DeepSpeedStrategy checkpoints hold one DeepSpeed model, but the state has several:"
            f" {[key for key, _ in found]}. Save each model (with its optimizer) to its own checkpoint directory."
        )
    model_key, engine = found[0]
    optimizer_keys = tuple(key for key, obj in state.items() if key != model_key and is_engine_optimizer(engine, obj))
    return EngineEntries(engine=engine, model_key=model_key, optimizer_keys=optimizer_keys)


def check_local_path(path: PathLike) -> str:
    if is_remote_path(path):
        raise ValueError(
            f"DeepSpeed writes and reads checkpoints on the local filesystem only, got {os.fspath(path)!r}."
            " Save to a local (or mounted) directory and copy it afterwards."
        )
    return os.fspath(path)


def save_engine_checkpoint(
    strategy: DeepSpeedEngines,
    path: PathLike,
    state: Mapping[str, Any],
    filter: StateFilter | None,
    exclude_frozen_parameters: bool,
) -> None:
    """Save the engine in ``state`` with ``engine.save_checkpoint``; the other entries become its client state."""
    directory = check_local_path(path)
    entries = engine_entries(strategy.engines, state, "save")
    filtered = sorted(set(filter or {}) & entries.keys)
    if filtered:
        raise ValueError(
            f"`filter` cannot apply to {filtered}: DeepSpeed saves its model and optimizer whole, in its own format."
            f" Filter only the other entries of the state: {sorted(set(state) - entries.keys)}"
        )
    others = {key: obj for key, obj in state.items() if key not in entries.keys}
    client_state = to_checkpoint(strategy, others, filter)
    client_state[ENGINE_KEYS_ENTRY] = {
        "model": entries.model_key,
        "optimizers": list(entries.optimizer_keys),
        "client": list(client_state),
    }
    entries.engine.save_checkpoint(
        directory,
        tag=CHECKPOINT_TAG,
        client_state=client_state,
        exclude_frozen_parameters=exclude_frozen_parameters,
    )


def load_engine_checkpoint(
    strategy: DeepSpeedEngines,
    path: PathLike,
    state: dict[str, Any],
    strict: bool,
    weights_only: bool | None = None,
) -> dict[str, Any]:
    """Restore the engine (and its optimizer, when ``state`` holds it) from the DeepSpeed checkpoint at ``path``;
    restore the other entries of ``state`` from the client state; return the client state they did not take.

    Unless ``weights_only`` is False, the files are checked first (see the module docstring)."""
    directory = check_local_path(path)
    entries = engine_entries(strategy.engines, state, "load")
    tag = trusted_tag(entries.engine, directory, weights_only)
    with_optimizer = bool(entries.optimizer_keys)
    with loading(directory, entries.model_key):
        _, client_state = entries.engine.load_checkpoint(
            directory,
            tag=tag,
            load_module_strict=strict,
            load_optimizer_states=with_optimizer,
            load_lr_scheduler_states=False,
            load_module_only=not with_optimizer,
        )
    if client_state is None:
        raise FileNotFoundError(f"No DeepSpeed checkpoint at {directory!r} (tag {tag!r}).")
    client_state = dict(client_state)
    saved_keys = client_state.pop(ENGINE_KEYS_ENTRY, None)
    if saved_keys is not None:
        # DeepSpeed returns its own bookkeeping (ds_config, ds_version, ...) with the client state: keep ours only
        client_state = {key: client_state[key] for key in saved_keys["client"] if key in client_state}
        available = {saved_keys["model"], *saved_keys["optimizers"], *client_state}
        check_strict_keys([entries.model_key, *entries.optimizer_keys], available, strict)
    others = {key: obj for key, obj in state.items() if key not in entries.keys}
    remainder = restore_state(strategy, others, client_state, strict, path=directory)
    state.update(others)  # plain values were replaced in `others`
    return remainder


def load_engine_module(engine: Any, path: PathLike, strict: bool, weights_only: bool | None = None) -> None:
    """Load only the module weights of the DeepSpeed checkpoint at ``path`` into ``engine`` (files checked first)."""
    directory = check_local_path(path)
    tag = trusted_tag(engine, directory, weights_only)
    with loading(directory, engine.module):
        engine.load_checkpoint(directory, tag=tag, load_module_strict=strict, load_module_only=True)


def trusted_tag(engine: Any, directory: str, weights_only: bool | None) -> str:
    """The tag DeepSpeed would load from ``directory`` (read from its ``latest`` file, plain text), after checking
    every torch file under it with the weights-only unpickler unless ``weights_only`` is False.

    Returning the tag lets the load name it explicitly, so DeepSpeed reads the directory that was checked."""
    pointer = "latest_universal" if _loads_universal_checkpoints(engine) else "latest"
    return checked_tag(directory, pointer, weights_only)


def checked_tag(directory: str, pointer: str, weights_only: bool | None) -> str:
    """The tag that the file ``pointer`` (``latest``) of ``directory`` names, checked as ``trusted_tag`` says."""
    try:
        with open(os.path.join(directory, pointer)) as file:
            tag = file.read().strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        tag = ""
    if not tag:
        raise FileNotFoundError(
            f"No DeepSpeed checkpoint at {directory!r}: it needs the {pointer!r} file that save writes next to the"
            f" {CHECKPOINT_TAG!r} directory, naming the tag to load."
        )
    tag_directory = resolve_inside(directory, tag, what=f"checkpoint tag (in its {pointer!r} file)")
    _files_inside(tag_directory)  # with weights_only=False too
    if weights_only is not False:
        check_weights_only(tag_directory)
    return tag


def _files_inside(tag_directory: str) -> list[str]:
    """Every file under ``tag_directory`` (what DeepSpeed reads); each one, and each folder on the way, checked to
    lie inside it (a symbolic link may not lead out)."""
    found: list[str] = []
    for root, folders, names in os.walk(tag_directory):
        for name in [*folders, *names]:
            resolve_inside(tag_directory, os.path.relpath(os.path.join(root, name), tag_directory))
        found.extend(os.path.join(root, name) for name in names)
    return sorted(found)


def check_weights_only(tag_directory: str) -> None:
    """Read every torch file (``*.pt``) under ``tag_directory`` with ``torch.load(weights_only=True)``; raise
    ``UnsafeCheckpointError`` naming the first file that holds anything else than tensors, plain data and
    DeepSpeed's records (or lies outside ``tag_directory``), and ``ValueError`` naming a file that cannot be read."""
    files = [file for file in _files_inside(tag_directory) if file.endswith(".pt")]
    for file in files:
        try:
            load_weights_only(file)
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpointError(
                f"Refusing to load the DeepSpeed checkpoint file {file!r}: it holds {refused_global(err)}, which is"
                " not a tensor, plain data or a DeepSpeed record, and DeepSpeed would unpickle it (which can run code)."
                " Pass weights_only=False only if you trust where this checkpoint came from, or allow that type with"
                " torch.serialization.add_safe_globals([...])."
            ) from None
        except (RuntimeError, OSError, EOFError, ValueError) as err:
            raise ValueError(
                f"Could not read the DeepSpeed checkpoint file {file!r}: {type(err).__name__}: {err}"
            ) from err


def load_weights_only(file: str) -> Any:
    """``torch.load(file, weights_only=True)`` (memory-mapped when it can be) that also allows DeepSpeed's records."""
    already = torch.serialization.get_safe_globals()  # the user's own: left allowed afterwards
    records: list[Any] = [record for record in _deepspeed_records() if record not in already]
    with torch.serialization.safe_globals(records):
        return torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))


def _deepspeed_records() -> list[Callable[..., Any]]:
    if not DEEPSPEED.available:  # no DeepSpeed, nothing will unpickle its records
        return []
    found: list[Callable[..., Any]] = []
    for module, name in _DEEPSPEED_RECORDS:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return found


def _loads_universal_checkpoints(engine: Any) -> bool:
    method = getattr(engine, "load_universal_checkpoint", None)
    return bool(method()) if callable(method) else False
