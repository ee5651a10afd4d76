"""Which submodules get their own FSDP unit or activation checkpointing: module policies.

A policy is a set (or list/tuple) of module classes, or a callable ``policy(module) -> bool``. ``wrap_targets``
lists the matching submodules children-first ("bottom-up"), the order in which ``fully_shard`` must be applied;
the root module is always sharded last by the strategy and is never one of the targets.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Union

import torch
from torch.nn import Module
from torch.utils.checkpoint import checkpoint

ModulePolicy = Union[Collection[type[Module]], Callable[[Module], bool]]


class ClassPolicy:
    """Selects the modules that are instances of some classes (picklable, for processes started with spawn)."""

    def __init__(self, classes: tuple[type[Module], ...]) -> None:
        self.classes = classes

    def __call__(self, module: Module) -> bool:
        return isinstance(module, self.classes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(cls.__name__ for cls in self.classes)})"


def resolve_policy(policy: ModulePolicy | type[Module] | None, name: str) -> Callable[[Module], bool] | None:
    """``policy`` as a predicate on modules (``None`` stays ``None``); ``TypeError`` naming ``name`` if invalid."""
    if policy is None:
        return None
    if isinstance(policy, type):
        policy = {policy}
    if isinstance(policy, (set, frozenset, list, tuple)):
        classes = tuple(policy)
        bad = [item for item in classes if not (isinstance(item, type) and issubclass(item, Module))]
        if bad:
            raise TypeError(f"{name} must hold torch.nn.Module subclasses, got {bad!r}")
        return ClassPolicy(classes) if classes else None
    if callable(policy):
        return policy
    raise TypeError(
        f"{name} must be a set of module classes (e.g. {{TransformerBlock}}) or a callable (module) -> bool,"
        f" got {policy!r}"
    )


def wrap_targets(root: Module, policy: Callable[[Module], bool] | None) -> list[Module]:
    """The submodules of ``root`` (not ``root`` itself) that ``policy`` selects, every module after its descendants.

    Without a policy, the classes that ``root`` names in ``_no_split_modules`` (Hugging Face models list their decoder
    layers there) are selected; a model without that attribute gets none.
    """
    if policy is None:
        policy = _no_split_policy(root)
        if policy is None:
            return []
    # named_modules() is a pre-order walk (each module before its descendants); reversed, descendants come first
    modules = [module for _, module in root.named_modules()][1:]
    return [module for module in reversed(modules) if policy(module)]


def _no_split_policy(root: Module) -> Callable[[Module], bool] | None:
    names = getattr(root, "_no_split_modules", None)
    if not isinstance(names, (set, frozenset, list, tuple)) or not names:
        return None
    names = frozenset(name for name in names if isinstance(name, str))
    return lambda module: type(module).__name__ in names


class _CheckpointedForward:
    """A module's forward that keeps no activations: they are recomputed during backward."""

    def __init__(self, forward: Callable[..., Any]) -> None:
        self.forward = forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return self.forward(*args, **kwargs)
        return checkpoint(self.forward, *args, use_reentrant=False, **kwargs)


def apply_activation_checkpointing(root: Module, policy: Callable[[Module], bool] | None) -> list[str]:
    """Make the forward of each submodule that ``policy`` selects recompute its activations during backward.

    The modules keep their names and parameters (no wrapper module is inserted, so state-dict keys do not change).
    Returns the qualified names of the modules changed; calling it again changes nothing twice.
    """
    if policy is None:
        return []
    changed = []
    for name, module in root.named_modules():
        if not policy(module) or is_activation_checkpointed(module):
            continue
        # an instance attribute ``forward`` takes precedence over the class's forward in ``Module.__call__``
        module.forward = _CheckpointedForward(module.forward)  # type: ignore[method-assign]
        changed.append(name)
    return changed


def is_activation_checkpointed(module: Module) -> bool:
    return isinstance(vars(module).get("forward"), _CheckpointedForward)
