"""Protocols and type aliases shared across packages."""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, Union, runtime_checkable

import torch

PathLike = Union[str, Path]
ReduceOpName = Literal["mean", "avg", "sum", "min", "max", "product"]
REDUCE_OP_NAMES: tuple[str, ...] = ("mean", "avg", "sum", "min", "max", "product")


def check_reduce_op(reduce_op: object) -> str:
    """Validate a reduction name (case-insensitive) or ``torch.distributed.ReduceOp``; return it normalised."""
    if isinstance(reduce_op, str):
        name = reduce_op.lower()
        if name in REDUCE_OP_NAMES:
            return "mean" if name == "avg" else name
    elif reduce_op is not None and type(reduce_op).__name__ in ("ReduceOp", "RedOpType"):
        return str(reduce_op)
    raise ValueError(f"Unknown reduce_op {reduce_op!r}. Choose one of: {', '.join(REDUCE_OP_NAMES)}")


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
