"""Checkpoints of a DeepSpeed engine in DeepSpeed's own format, with the rest of fabric's state as client state."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fabric_io import is_remote_path
from fabric_strategies.checkpoint import StateFilter, check_strict_keys, restore_state, to_checkpoint
from fabric_utils import PathLike

if TYPE_CHECKING:
    from fabric_strategies.deepspeed.strategy import DeepSpeedStrategy

#: the tag (sub-directory) fabric saves under; ``latest`` points to it, so DeepSpeed's tools find it too
CHECKPOINT_TAG = "checkpoint"
#: the client-state entry that records which keys of the saved state the engine itself holds
ENGINE_KEYS_ENTRY = "_fabric_deepspeed_engine_keys"


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
    strategy: DeepSpeedStrategy,
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
    strategy: DeepSpeedStrategy, path: PathLike, state: dict[str, Any], strict: bool
) -> dict[str, Any]:
    """Restore the engine (and its optimizer, when ``state`` holds it) from the DeepSpeed checkpoint at ``path``;
    restore the other entries of ``state`` from the client state; return the client state they did not take."""
    directory = check_local_path(path)
    entries = engine_entries(strategy.engines, state, "load")
    with_optimizer = bool(entries.optimizer_keys)
    _, client_state = entries.engine.load_checkpoint(
        directory,
        tag=None,
        load_module_strict=strict,
        load_optimizer_states=with_optimizer,
        load_lr_scheduler_states=False,
        load_module_only=not with_optimizer,
    )
    if client_state is None:
        raise FileNotFoundError(
            f"No DeepSpeed checkpoint at {directory!r}: it needs the 'latest' file that save writes next to the"
            f" {CHECKPOINT_TAG!r} directory."
        )
    client_state = dict(client_state)
    saved_keys = client_state.pop(ENGINE_KEYS_ENTRY, None)
    if saved_keys is not None:
        # DeepSpeed returns its own bookkeeping (ds_config, ds_version, ...) with the client state: keep ours only
        client_state = {key: client_state[key] for key in saved_keys["client"] if key in client_state}
        available = {saved_keys["model"], *saved_keys["optimizers"], *client_state}
        check_strict_keys([entries.model_key, *entries.optimizer_keys], available, strict)
    others = {key: obj for key, obj in state.items() if key not in entries.keys}
    remainder = restore_state(strategy, others, client_state, strict)
    state.update(others)  # plain values were replaced in `others`
    return remainder
