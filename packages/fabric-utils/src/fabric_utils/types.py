"""Protocols and type aliases shared across packages."""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, Union, runtime_checkable

import torch

if torch.distributed.is_available():
    from torch.distributed import ReduceOp

    RedOpType: Any = ReduceOp.RedOpType
    """The type of ``torch.distributed.ReduceOp``'s members (``ReduceOp.SUM``, ...)."""
else:  # a torch build without distributed support: nothing can be an instance of these
    ReduceOp = type("ReduceOp", (), {})  # type: ignore[assignment,misc]
    RedOpType = type("RedOpType", (), {})

PathLike = Union[str, Path]
ReduceOpName = Literal["mean", "avg", "sum", "min", "max", "product"]
REDUCE_OP_NAMES: tuple[str, ...] = ("mean", "avg", "sum", "min", "max", "product")
"""Accepted reduction names; ``check_reduce_op`` returns one of them, with ``avg`` normalised to ``mean``."""


_REDUCE_OP_ALIASES = {"avg": "mean"}


def _reduce_op_name(reduce_op: object) -> str | None:
    """The lowercase name of a ``torch.distributed.ReduceOp`` (or one of its members), else ``None``."""
    if not torch.distributed.is_available():
        return None
    if isinstance(reduce_op, RedOpType):
        return reduce_op.name.lower()
    if isinstance(reduce_op, ReduceOp) and not isinstance(reduce_op, type):
        op = getattr(reduce_op, "op", None)
        if isinstance(op, ReduceOp.RedOpType):
            return op.name.lower()
    return None


def check_reduce_op(reduce_op: object) -> str:
    """Validate a reduction given by name (case-insensitive) or as ``torch.distributed.ReduceOp``.

    Returns the canonical lowercase name: for names one of ``mean``, ``sum``, ``min``, ``max``, ``product`` (``avg``
    becomes ``mean``); for a ``ReduceOp`` its member's name (``ReduceOp.AVG`` becomes ``mean``, ``ReduceOp.BAND``
    ``band``). Anything else raises ``ValueError`` naming it and listing the choices, so a mistake surfaces on a
    single device too, where the reduction itself does nothing.
    """
    if isinstance(reduce_op, str):
        name = _REDUCE_OP_ALIASES.get(reduce_op.lower(), reduce_op.lower())
        if name in REDUCE_OP_NAMES:
            return name
    else:
        op_name = _reduce_op_name(reduce_op)
        if op_name is not None:
            return _REDUCE_OP_ALIASES.get(op_name, op_name)
    raise ValueError(
        f"Unknown reduce_op {reduce_op!r}. Choose one of: {', '.join(REDUCE_OP_NAMES)} (case-insensitive),"
        " or a torch.distributed.ReduceOp"
    )


@runtime_checkable
class CollectibleGroup(Protocol):
    """A group of processes that collectives run in: ``torch.distributed.ProcessGroup`` (from ``new_group``) is one."""

    def size(self) -> int: ...

    def rank(self) -> int: ...


@runtime_checkable
class Stateful(Protocol):
    """Anything with ``state_dict()`` and ``load_state_dict(state)``."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


@runtime_checkable
class Logger(Protocol):
    """What ``Fabric.log`` needs from a logger. ``fabric_loggers.Logger`` implements it; so may any object."""

    @property
    def name(self) -> str | None: ...

    @property
    def version(self) -> int | str | None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None: ...

    def save(self) -> None: ...

    def finalize(self, status: str) -> None: ...


@runtime_checkable
class Steppable(Protocol):
    def step(self, closure: Any = None) -> Any: ...


@runtime_checkable
class Optimizable(Steppable, Protocol):
    param_groups: list[dict[Any, Any]]
    defaults: dict[Any, Any]
    state: Mapping[torch.Tensor, Any]

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


def check_num_nodes(num_nodes: object) -> int:
    """``num_nodes`` as a user gives it to ``Fabric`` or a strategy: an int >= 1 (a string such as "2" is refused).

    ``TypeError`` for anything that is not an int, ``ValueError`` for an int below 1; both name the value.
    """
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int):
        raise TypeError(f"num_nodes={num_nodes!r} must be an int >= 1, got {type(num_nodes).__name__}")
    if num_nodes < 1:
        raise ValueError(f"num_nodes={num_nodes!r} is invalid: it must be an int >= 1")
    return num_nodes
