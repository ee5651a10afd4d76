"""Turning a user's ``state`` into a checkpoint dict and restoring a checkpoint into a ``state``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from torch.nn import Module
from torch.optim import Optimizer

from fabric_io import CheckpointIO
from fabric_utils import PathLike, Stateful

StateFilter = Mapping[str, Callable[[str, Any], bool]]
#: what a checkpoint is loaded into: a module or an optimizer (the file holds its raw state dict), a state dict, or
#: nothing (the checkpoint is returned)
LoadTarget = Module | Optimizer | dict[str, Any] | None


class CheckpointingStrategy(Protocol):
    """What turning a state into a checkpoint and back needs of a strategy (every ``Strategy`` has it); declared
    here so that this module, which ``Strategy`` uses, does not import it back."""

    @property
    def checkpoint_io(self) -> CheckpointIO: ...

    def get_module_state_dict(self, module: Module) -> dict[str, Any]: ...

    def load_module_state_dict(self, module: Module, state_dict: Mapping[str, Any], strict: bool = True) -> None: ...

    def get_optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]: ...


class MissingStateKeyError(KeyError, ValueError):
    """``load(..., strict=True)`` asked for keys that the checkpoint does not hold."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def check_filter(state: Mapping[str, Any], filter: StateFilter | None) -> None:
    """Validate ``filter``: a mapping from keys of ``state`` to callables ``(name, value) -> bool``."""
    if filter is None:
        return
    if not isinstance(filter, Mapping):
        raise TypeError(f"`filter` must be a dict mapping state keys to callables, got {type(filter).__name__}")
    unknown = sorted(str(key) for key in filter if key not in state)
    if unknown:
        raise ValueError(
            f"`filter` has keys {unknown} that are not in the state. Choose from: {sorted(map(str, state))}"
        )
    not_callable = [f"{fn!r} for {key!r}" for key, fn in filter.items() if not callable(fn)]
    if not_callable:
        raise TypeError(f"`filter` values must be callables (name, value) -> bool, got {', '.join(not_callable)}")


def to_checkpoint(
    strategy: CheckpointingStrategy, state: Mapping[str, Any], filter: StateFilter | None = None
) -> dict[str, Any]:
    """Replace modules, optimizers and other stateful objects in ``state`` by their state dicts, then filter."""
    if not isinstance(state, Mapping):
        raise TypeError(f"`state` must be a dict of names to objects, got {type(state).__name__}")
    check_filter(state, filter)
    return convert_state(state, filter, strategy.get_module_state_dict, strategy.get_optimizer_state)


def convert_state(
    state: Mapping[str, Any],
    filter: StateFilter | None,
    module_state: Callable[[Module], Any],
    optimizer_state: Callable[[Optimizer], Any],
) -> dict[str, Any]:
    """``state`` with each module and optimizer replaced by what ``module_state``/``optimizer_state`` make of it
    and each other stateful object by its ``state_dict()``; then the state dicts that ``filter`` names keep only
    the entries it accepts."""
    checkpoint: dict[str, Any] = {}
    for key, obj in state.items():
        if isinstance(obj, Module):
            value: Any = module_state(obj)
        elif isinstance(obj, Optimizer):
            value = optimizer_state(obj)
        elif isinstance(obj, Stateful):
            value = obj.state_dict()
        else:
            value = obj
        if filter is not None and key in filter and isinstance(value, Mapping):
            keep = filter[key]
            value = {name: item for name, item in value.items() if keep(name, item)}
        checkpoint[key] = value
    return checkpoint


def check_strict_keys(requested: Iterable[str], available: Iterable[str], strict: bool) -> None:
    missing = sorted(set(requested) - set(available))
    if strict and missing:
        raise MissingStateKeyError(
            f"The state asks for {missing}, which the checkpoint does not hold (it holds {sorted(set(available))})."
            " Pass `strict=False` to load the keys that exist."
        )


def restore_state(
    strategy: CheckpointingStrategy, state: dict[str, Any], checkpoint: dict[str, Any], strict: bool, *, path: PathLike
) -> dict[str, Any]:
    """Load ``checkpoint`` (read from ``path``) into the objects of ``state`` in place; return what ``state`` did
    not take.

    Modules, optimizers and stateful objects load their entry; plain values in ``state`` are replaced. An error from
    an object's ``load_state_dict`` names its key and ``path`` (see ``loading``).
    """
    check_strict_keys(state, checkpoint, strict)
    remainder = dict(checkpoint)
    for key, obj in list(state.items()):
        if key not in remainder:
            continue
        value = remainder.pop(key)
        if isinstance(obj, Module):
            with loading(path, key):
                strategy.load_module_state_dict(obj, value, strict=strict)
        elif isinstance(obj, (Optimizer, Stateful)):
            with loading(path, key):
                obj.load_state_dict(value)
        else:
            state[key] = value
    return remainder


def named_optimizer_state(saved: Mapping[str, Any], optimizer: Optimizer, owner: Module) -> dict[str, Any]:
    """An optimizer state in torch's own layout (parameters numbered in group order, as a single device or DDP saves
    it) keyed by the parameter names of ``owner`` instead, the layout that sharded strategies load; a state already
    keyed by name is returned as it is. The inverse of ``_indexed_optimizer_state``."""
    groups = saved.get("param_groups", [])
    if not any(isinstance(index, int) for group in groups for index in group["params"]):
        return dict(saved)
    names = {id(p): name for name, p in owner.named_parameters()}
    name_of = dict(enumerate(names[id(p)] for group in optimizer.param_groups for p in group["params"]))
    unknown = sorted({index for group in groups for index in group["params"]} - set(name_of))
    if unknown:
        raise KeyError(f"the checkpoint's optimizer has parameters {unknown}; this optimizer has {len(name_of)}")
    return {
        "state": {name_of[index]: value for index, value in saved.get("state", {}).items() if index in name_of},
        "param_groups": [{**group, "params": [name_of[index] for index in group["params"]]} for group in groups],
    }


# what ``load_state_dict`` raises for a state that does not fit (torch: RuntimeError for keys and shapes, ValueError
# and KeyError for optimizer groups); rebuilt with the same type and the added context. A subclass may take other
# constructor arguments: it passes unchanged.
_REBUILT = (RuntimeError, ValueError, KeyError, TypeError, MissingStateKeyError)


@contextmanager
def loading(path: PathLike, target: str | Module | Optimizer) -> Iterator[None]:
    """Name ``target`` and the checkpoint ``path`` in an error raised while loading ``target``'s state.

    ``target`` is a key of the user's state (named as ``state['model']``) or the module/optimizer given alone.
    torch's ``load_state_dict`` reports missing or unexpected keys and wrong shapes, but neither which entry of the
    state nor which file: the error raised here keeps its type and torch's text, prefixed with both.
    """
    try:
        yield
    except _REBUILT as err:
        if type(err) not in _REBUILT:
            raise
        if isinstance(target, str):
            what = f"state[{target!r}]"
        else:
            what = f"the {type(target).__name__} {'module' if isinstance(target, Module) else 'optimizer'}"
        detail = err.args[0] if isinstance(err, KeyError) and len(err.args) == 1 else err
        raise type(err)(f"Could not load {what} from the checkpoint {os.fspath(path)!r}: {detail}") from err
