"""Saving and loading the state of sharded modules and their optimizers.

Two formats:

- ``"sharded"``: a ``torch.distributed.checkpoint`` directory. Every process writes its own shards (modules and
  optimizers through ``torch.distributed.checkpoint.state_dict``, keyed by parameter name), plain entries are
  stored beside them. It loads at any world size, and into a module that is not sharded at all.
- ``"full"``: one ``torch.save`` file written by global rank 0 with the full state dicts (gathered to CPU).

Loading picks the format from what is at the path (a directory or a file). Every function here is collective:
all processes call it with the same arguments.
"""

from __future__ import annotations

import functools
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from torch.nn import Module
from torch.optim import Optimizer

from fabric_io import (
    CheckpointIO,
    is_remote_path,
    is_sharded_checkpoint,
    load_sharded_checkpoint,
    read_sharded_metadata,
    save_sharded_checkpoint,
)
from fabric_strategies.checkpoint import (
    CheckpointingStrategy,
    LoadTarget,
    MissingStateKeyError,
    StateFilter,
    check_filter,
    check_strict_keys,
    convert_state,
    loading,
    named_optimizer_state,
)
from fabric_strategies.fsdp.dcp_io import read_sharded_checkpoint, saved_paths, top_level_keys
from fabric_utils import PathLike, Stateful

if TYPE_CHECKING:
    from torch.distributed.checkpoint.state_dict import StateDictOptions


class ShardedStates(CheckpointingStrategy, Protocol):
    """What these functions need of ``ShardedStrategy``; declared here so that this module, which ``ShardedStrategy``
    uses, does not import it back."""

    @property
    def state_dict_type(self) -> str: ...

    @property
    def setup_modules(self) -> list[Module]: ...

    @property
    def is_global_zero(self) -> bool: ...

    def barrier(self, name: str | None = None) -> None: ...


def _options(*, full: bool, strict: bool = True) -> StateDictOptions:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=full, strict=strict)


def module_state(module: Module, *, full: bool) -> dict[str, Any]:
    """The module's state dict: DTensor shards (``full=False``) or full CPU tensors on global rank 0 only."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module, options=_options(full=full))


def optimizer_state(module: Module, optimizer: Optimizer, *, full: bool) -> dict[str, Any]:
    """The optimizer's state dict keyed by parameter names of ``module`` (shards, or full on global rank 0 only)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=_options(full=full))


def load_module_state(module: Module, state_dict: Mapping[str, Any], *, strict: bool, full: bool) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(module, dict(state_dict), options=_options(full=full, strict=strict))


def load_optimizer_state(module: Module, optimizer: Optimizer, state_dict: Mapping[str, Any], *, full: bool) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, dict(state_dict), options=_options(full=full))


def find_module(optimizer: Optimizer, candidates: Iterable[Module]) -> Module:
    """The module among ``candidates`` that owns every parameter of ``optimizer``."""
    wanted = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for module in candidates:
        if wanted <= {id(p) for p in module.parameters()}:
            return module
    raise ValueError(
        f"Found no module that owns the parameters of the optimizer {type(optimizer).__name__}: a sharded"
        " optimizer state is keyed by parameter names, so its module must be set up by this strategy or be part of"
        " the same checkpoint state. Create the optimizer from the parameters of the module that `setup` returned."
    )


# -- save ----------------------------------------------------------------------------------------------------------
def save(strategy: ShardedStates, path: PathLike, state: Mapping[str, Any], filter: StateFilter | None) -> None:
    converted, full = to_sharded_checkpoint(strategy, path, state, filter)
    if not full:
        save_sharded_checkpoint(converted, path)
        return
    if strategy.is_global_zero:
        write_file(strategy.checkpoint_io, converted, path)  # the strategy's save_checkpoint waits for it on every rank


def to_sharded_checkpoint(
    strategy: ShardedStates, path: PathLike, state: Mapping[str, Any], filter: StateFilter | None
) -> tuple[dict[str, Any], bool]:
    """``state`` with modules and optimizers replaced by their state dicts (shards, or full ones on global rank 0)
    and ``filter`` applied, and whether it is the full format. Collective."""
    if not isinstance(state, Mapping):
        raise TypeError(f"`state` must be a dict of names to objects, got {type(state).__name__}")
    check_filter(state, filter)
    full = strategy.state_dict_type == "full"
    if not full and is_remote_path(path):
        raise ValueError(
            f"Sharded checkpoints are written to a directory on a (shared) filesystem, got the URL {os.fspath(path)!r}."
            " Use state_dict_type='full' to save one file to a URL."
        )
    modules = [obj for obj in state.values() if isinstance(obj, Module)]

    def optimizer_state_of(optimizer: Optimizer) -> dict[str, Any]:
        return optimizer_state(find_module(optimizer, [*modules, *strategy.setup_modules]), optimizer, full=full)

    converted = convert_state(state, filter, functools.partial(module_state, full=full), optimizer_state_of)
    return converted, full


def write_file(checkpoint_io: CheckpointIO, checkpoint: dict[str, Any], path: PathLike) -> None:
    """Write a full checkpoint file through ``checkpoint_io``; an existing sharded directory at ``path`` is replaced
    only once it is written."""
    target = os.fspath(path)
    if is_remote_path(path) or not os.path.isdir(target):
        checkpoint_io.save_checkpoint(checkpoint, path)
        return
    if os.listdir(target) and not is_sharded_checkpoint(target):
        raise ValueError(
            f"Refusing to replace {target!r} with a checkpoint file: it is a non-empty directory that is not a sharded"
            " checkpoint. Choose another path or remove it first."
        )
    parent, name = os.path.split(os.path.abspath(target))
    staged = os.path.join(parent, f".{name}.{uuid.uuid4().hex}.tmp")
    previous = os.path.join(parent, f".{name}.{uuid.uuid4().hex}.old")
    checkpoint_io.save_checkpoint(checkpoint, staged)
    os.rename(target, previous)
    os.replace(staged, target)
    shutil.rmtree(previous)


# -- load ----------------------------------------------------------------------------------------------------------
def load(
    strategy: ShardedStates, path: PathLike, state: LoadTarget, strict: bool, weights_only: bool
) -> dict[str, Any]:
    if state is not None and not isinstance(state, (Module, Optimizer, dict)):
        raise TypeError(f"`state` must be a module, an optimizer or a dict, got {type(state).__name__}")
    # a sharded checkpoint whose replacement was interrupted is read from its complete hidden sibling
    if not is_remote_path(path) and (os.path.isdir(os.fspath(path)) or is_sharded_checkpoint(path)):
        return _load_sharded(strategy, path, state, strict, weights_only)
    return _load_file(strategy, path, state, strict, weights_only)


def _load_sharded(
    strategy: ShardedStates, path: PathLike, state: LoadTarget, strict: bool, weights_only: bool
) -> dict[str, Any]:
    metadata = read_sharded_metadata(path, weights_only=weights_only)
    if isinstance(state, Module):  # a directory that holds a module's raw state dict
        values = module_state(state, full=False)
        with loading(path, state):
            _check_module_keys(values, {str(p[0]) for p in saved_paths(metadata).values()}, strict, "")
            load_sharded_checkpoint(values, path, strict=strict, weights_only=weights_only)
            load_module_state(state, values, strict=strict, full=False)
        return {}
    if isinstance(state, Optimizer):
        raise TypeError(
            f"{os.fspath(path)!r} is a sharded checkpoint directory: load an optimizer from it together with its"
            " module, e.g. load(path, {'model': model, 'optimizer': optimizer})"
        )
    available = top_level_keys(metadata)
    if not state:
        return read_sharded_checkpoint(path, weights_only=weights_only, metadata=metadata)
    check_strict_keys(state, available, strict)
    modules = [obj for obj in state.values() if isinstance(obj, Module)]
    requested = [key for key in state if key in available]
    paths = list(saved_paths(metadata).values())
    targets: dict[str, Any] = {}
    owners: dict[str, Module] = {}
    for key in requested:
        obj = state[key]
        if isinstance(obj, Module):
            targets[key] = module_state(obj, full=False)
            with loading(path, key):
                _check_module_keys(targets[key], {str(p[1]) for p in paths if p[0] == key and len(p) == 2}, strict, key)
        elif isinstance(obj, Optimizer):
            owners[key] = find_module(obj, [*modules, *strategy.setup_modules])
            targets[key] = optimizer_state(owners[key], obj, full=False)
    plain = [key for key in requested if key not in targets]
    targets.update(read_sharded_checkpoint(path, plain, weights_only=weights_only, metadata=metadata) if plain else {})
    sharded = {k: v for k, v in targets.items() if k not in plain}
    load_sharded_checkpoint(sharded, path, strict=strict, weights_only=weights_only)
    for key in requested:
        _restore(state, key, targets[key], owners.get(key), strict=strict, full=False, path=path)
    leftover = [key for key in available if key not in state]
    return read_sharded_checkpoint(path, leftover, weights_only=weights_only, metadata=metadata) if leftover else {}


def _check_module_keys(values: Mapping[str, Any], saved: set[str], strict: bool, key: str) -> None:
    """With ``strict``, the module's state-dict keys and the saved ones must match (the error lists the difference)."""
    if not strict:
        return
    expected = set(values)
    missing, unexpected = sorted(expected - saved), sorted(saved - expected)
    if missing or unexpected:
        where = f" under {key!r}" if key else ""
        raise MissingStateKeyError(
            f"The checkpoint's module state{where} does not match the module: missing keys {missing}, unexpected keys"
            f" {unexpected}. Pass strict=False to load the keys that match."
        )


def _restore(
    state: dict[str, Any], key: str, value: Any, owner: Module | None, *, strict: bool, full: bool, path: PathLike
) -> None:
    obj = state[key]
    with loading(path, key):
        if isinstance(obj, Module):
            load_module_state(obj, value, strict=strict, full=full)
        elif isinstance(obj, Optimizer):
            assert owner is not None
            load_optimizer_state(owner, obj, value, full=full)
        elif isinstance(obj, Stateful):
            obj.load_state_dict(value)
        else:
            state[key] = value


def _load_file(
    strategy: ShardedStates, path: PathLike, state: LoadTarget, strict: bool, weights_only: bool
) -> dict[str, Any]:
    checkpoint = strategy.checkpoint_io.load_checkpoint(path, map_location="cpu", weights_only=weights_only)
    if isinstance(state, Module):
        with loading(path, state):
            load_module_state(state, checkpoint, strict=strict, full=True)
        return {}
    if isinstance(state, Optimizer):
        module = find_module(state, strategy.setup_modules)
        with loading(path, state):
            load_optimizer_state(module, state, named_optimizer_state(checkpoint, state, module), full=True)
        return {}
    if not state:
        return checkpoint
    check_strict_keys(state, checkpoint, strict)
    modules = [obj for obj in state.values() if isinstance(obj, Module)]
    remainder = dict(checkpoint)
    for key in [k for k in state if k in checkpoint]:
        value = remainder.pop(key)
        obj = state[key]
        owner = find_module(obj, [*modules, *strategy.setup_modules]) if isinstance(obj, Optimizer) else None
        if owner is not None and isinstance(value, Mapping):  # a full file of a single device or DDP numbers them
            with loading(path, key):
                value = named_optimizer_state(value, obj, owner)
        _restore(state, key, value, owner, strict=strict, full=True, path=path)
    return remainder
