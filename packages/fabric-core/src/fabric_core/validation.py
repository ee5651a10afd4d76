"""Argument checks of ``Fabric``'s methods: a mistake raises a ``TypeError``/``ValueError`` that names the bad value
and what is accepted, before anything changes."""

from __future__ import annotations

import os
import reprlib
import weakref
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from fabric_core.wrappers import is_wrapped
from fabric_io import check_path
from fabric_utils import Logger, check_clip_threshold, check_norm_type


def check_bool(method: str, **flags: Any) -> None:
    """Each of ``flags`` must be a bool: ``"yes"``, ``1`` or ``None`` would silently mean something else."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(
                f"fabric.{method}({name}={value!r}) must be a bool (True or False), got {type(value).__name__}"
            )


def check_optional_bool(method: str, **flags: Any) -> None:
    """Each of ``flags`` must be a bool or None (None: the default behaviour)."""
    for name, value in flags.items():
        if value is not None and not isinstance(value, bool):
            raise TypeError(
                f"fabric.{method}({name}={value!r}) must be a bool or None (True, False or None),"
                f" got {type(value).__name__}"
            )


def check_clip_arguments(clip_val: Any, max_norm: Any, norm_type: Any, error_if_nonfinite: Any) -> None:
    """``clip_gradients`` takes exactly one finite threshold > 0, a p-norm order > 0 and a bool."""
    if (clip_val is None) == (max_norm is None):
        raise ValueError(
            f"clip_gradients needs exactly one of clip_val or max_norm, got clip_val={clip_val!r} and"
            f" max_norm={max_norm!r}. Pass max_norm=... to clip the total norm, or clip_val=... to clamp each value."
        )
    if clip_val is not None:
        check_clip_threshold("clip_val", clip_val, caller="fabric.clip_gradients")
    else:
        check_clip_threshold("max_norm", max_norm, caller="fabric.clip_gradients")
    check_norm_type(norm_type, caller="fabric.clip_gradients")
    check_bool("clip_gradients", error_if_nonfinite=error_if_nonfinite)


def check_metrics(metrics: Any, step: Any) -> None:
    """``fabric.log``/``log_dict``: metrics are a mapping from names (str) to values; ``step`` is an int or None."""
    if not isinstance(metrics, Mapping):
        raise TypeError(f"fabric.log_dict(metrics=...) takes a dict of name -> value, got {type(metrics).__name__}")
    for name in metrics:
        if not isinstance(name, str):
            raise TypeError(f"A metric name must be a str, got {name!r} of type {type(name).__name__}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        raise TypeError(f"step must be an int or None, got {step!r} of type {type(step).__name__}")


def check_loggers(loggers: Any) -> list[Logger]:
    """``loggers``: None, one logger or a list/tuple of them; each implements the ``fabric_utils.Logger`` protocol."""
    if loggers is None:
        return []
    items = list(loggers) if isinstance(loggers, (list, tuple)) else [loggers]
    for logger in items:
        if isinstance(logger, type):  # a class has the protocol's members too, but its methods are unbound
            raise TypeError(f"loggers={logger.__name__} is a class: pass an instance, e.g. {logger.__name__}(...)")
        if not isinstance(logger, Logger):
            needed = "name, version, log_metrics, log_hyperparams, save, finalize"
            raise TypeError(f"{logger!r} is not a logger: a logger implements {needed} (fabric_utils.Logger)")
    if len({id(logger) for logger in items}) < len(items):
        raise ValueError(f"loggers={loggers!r} holds the same logger twice: every metric would be logged twice.")
    return items


def check_setup_dataloaders(dataloaders: Sequence[Any], **flags: Any) -> None:
    """``setup_dataloaders`` takes at least one torch DataLoader, none of them set up before, and bool ``flags``."""
    if not dataloaders:
        raise ValueError("setup_dataloaders needs at least one DataLoader")
    check_bool("setup_dataloaders", **flags)
    for loader in dataloaders:
        if is_wrapped(loader):
            raise ValueError("This dataloader was already set up by fabric.setup_dataloaders; set it up only once.")
        if not isinstance(loader, DataLoader):
            raise TypeError(f"setup_dataloaders expects torch DataLoaders, got {type(loader).__name__}")


def check_save_state(path: Any, state: Any) -> None:
    """``save(path, state)``: the path first, then a dict of names to objects."""
    check_path_first("save", path, state, "state")
    if not isinstance(state, Mapping):
        raise TypeError(
            "fabric.save(state=...) must be a dict of names to objects, e.g. {'model': model, 'optimizer':"
            f" optimizer}}, got {reprlib.repr(state)} of type {type(state).__name__}"
        )


def check_setup_module(module: Any, set_up: Collection[Any]) -> None:
    """``setup``/``setup_module`` take an original ``nn.Module`` that this Fabric has not set up (``set_up``) yet."""
    if is_wrapped(module):
        raise ValueError("This model is already set up by fabric.setup; pass the original model, only once.")
    if not isinstance(module, nn.Module):
        raise TypeError(f"fabric.setup expects a torch.nn.Module, got {type(module).__name__}")
    if module in set_up:
        raise ValueError(
            f"This {type(module).__name__} was already set up by this Fabric; set up each model only once and"
            " use the returned wrapper."
        )


def check_setup_optimizers(optimizers: Sequence[Any], set_up: Collection[Any]) -> None:
    """Torch optimizers, each passed once and not set up before (by this Fabric: ``set_up``; or wrapped)."""
    for index, optimizer in enumerate(optimizers):
        if any(optimizer is other for other in optimizers[:index]):
            raise ValueError(f"The {type(optimizer).__name__} optimizer is passed twice; pass each one once.")
        if is_wrapped(optimizer) or optimizer in set_up:
            raise ValueError(
                f"This {type(optimizer).__name__} optimizer is already set up by fabric; set it up only once."
            )
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"fabric.setup expects torch optimizers, got {type(optimizer).__name__}")


def check_optimizers_own_parameters(module: nn.Module, optimizers: Sequence[Optimizer]) -> None:
    """``fabric.setup(module, *optimizers)``: every parameter an optimizer updates must be one of ``module``'s (a
    subset is fine: frozen or shared parameters, several optimizers). Any other parameter would be left out of the
    strategy's wrapping (not synchronised, not sharded) while the optimizer keeps updating it."""
    owned = {id(parameter) for parameter in module.parameters()}
    for index, optimizer in enumerate(optimizers):
        held = _held_parameters(optimizer)
        foreign = sum(1 for key in held if key not in owned)
        if foreign:
            raise ValueError(
                f"fabric.setup: optimizer {index} ({type(optimizer).__name__}) updates {foreign} of its {len(held)}"
                f" parameters that are not parameters of the {type(module).__name__} being set up. Create the"
                " optimizer from model.parameters() (or a subset of them), and set up each other model with its own"
                " optimizer."
            )


class ReplacedParameters:
    """The parameters that setting up a model replaced (sharding, a precision that swaps layers). An optimizer
    created from them would update tensors the model no longer uses; ``setup_optimizers`` refuses it."""

    def __init__(self) -> None:
        # weak: a replaced parameter nobody holds any more is forgotten (and its id can be reused safely)
        self._replaced: weakref.WeakValueDictionary[int, Tensor] = weakref.WeakValueDictionary()

    def record(self, before: Iterable[Tensor], *after: nn.Module) -> None:
        """Remember those of ``before`` (a model's parameters before set-up) that none of ``after`` holds now."""
        current = {id(parameter) for module in after for parameter in module.parameters()}
        for parameter in before:
            if id(parameter) not in current:
                self._replaced[id(parameter)] = parameter

    def check(self, optimizers: Sequence[Optimizer]) -> None:
        for index, optimizer in enumerate(optimizers):
            held = _held_parameters(optimizer)
            stale = sum(1 for key, parameter in held.items() if self._replaced.get(key) is parameter)
            if stale:
                raise ValueError(
                    f"fabric.setup_optimizers: optimizer {index} ({type(optimizer).__name__}) updates {stale} of its"
                    f" {len(held)} parameters that setting up the model replaced (the strategy or the precision"
                    " swapped them). Create the optimizer after fabric.setup_module, from the parameters of the"
                    " model it returned."
                )

    def __getstate__(self) -> dict[str, Any]:
        return {}  # weak references do not pickle; a copy (e.g. in a spawned process) starts empty

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]


def _held_parameters(optimizer: Optimizer) -> dict[int, Tensor]:
    """The tensors ``optimizer`` updates, by identity (a parameter listed in two groups counts once)."""
    return {id(parameter): parameter for group in optimizer.param_groups for parameter in group["params"]}


def check_path_first(method: str, path: Any, second: Any, second_name: str) -> None:
    """``path`` must be a checkpoint path; given after the state (swapped arguments), the error says the order."""
    if not isinstance(path, (str, os.PathLike)) and isinstance(second, (str, os.PathLike)):
        raise TypeError(
            f"fabric.{method} takes the path first: fabric.{method}(path, {second_name}). Got a"
            f" {type(path).__name__} as the path and {second!r} as the {second_name}."
        )
    check_path(path, caller=f"fabric.{method}(path=...)")
