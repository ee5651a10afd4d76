"""Helpers that run something on global rank zero only.

The rank is never read at import time. Until a strategy sets ``rank_zero_only.rank``, it is looked up lazily from
the environment variables that common launchers export.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from fabric_utils.exceptions import FabricDeprecationWarning, FabricWarning

log = logging.getLogger("fabric")

_T = TypeVar("_T")

# checked in this order: torchrun/Fabric, SLURM, LSF (jsrun), MPICH/Intel MPI, Open MPI; a local rank is the last
# resort (it equals the global rank on one node)
_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "LOCAL_RANK")


def rank_from_environment() -> int:
    """Return the global rank advertised by the launcher's environment variables, or 0."""
    for key in _RANK_VARIABLES:
        value = os.environ.get(key)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                continue
    return 0


class _RankZeroOnly:
    """Decorator: the wrapped function runs only where ``rank_zero_only.rank == 0`` and returns ``default`` elsewhere.

    ``rank_zero_only.rank`` can be assigned (strategies set it once the process group exists); assigning ``None``
    goes back to deriving it from the environment, which happens every time it is read until then.
    """

    def __init__(self) -> None:
        self._rank: int | None = None

    @property
    def rank(self) -> int:
        return self._rank if self._rank is not None else rank_from_environment()

    @rank.setter
    def rank(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"rank_zero_only.rank must be a non-negative int or None, got {value!r}")
        self._rank = value

    def __call__(self, fn: Callable[..., _T], default: Any = None) -> Callable[..., _T | None]:
        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if self.rank == 0:
                return fn(*args, **kwargs)
            return default

        return wrapped


rank_zero_only = _RankZeroOnly()

# Stack levels below count from inside these helpers: for rank_zero_info/debug, 3 names the line that called them;
# for rank_zero_warn/deprecation, the default 4 names the caller of the function that called them, like
# ``warnings.warn(..., stacklevel=2)`` written in that function.


@rank_zero_only
def rank_zero_info(message: str, *args: Any, stacklevel: int = 3, **kwargs: Any) -> None:
    """``logging.info`` on the ``fabric`` logger, on global rank zero only."""
    log.info(message, *args, stacklevel=stacklevel, **kwargs)


@rank_zero_only
def rank_zero_debug(message: str, *args: Any, stacklevel: int = 3, **kwargs: Any) -> None:
    """``logging.debug`` on the ``fabric`` logger, on global rank zero only."""
    log.debug(message, *args, stacklevel=stacklevel, **kwargs)


@rank_zero_only
def rank_zero_warn(
    message: str | Warning, category: type[Warning] = FabricWarning, stacklevel: int = 4, **kwargs: Any
) -> None:
    """``warnings.warn`` on global rank zero only (category ``FabricWarning`` unless given)."""
    warnings.warn(message, category=category, stacklevel=stacklevel, **kwargs)


@rank_zero_only
def rank_zero_deprecation(message: str, stacklevel: int = 4) -> None:
    """A ``FabricDeprecationWarning`` on global rank zero only."""
    warnings.warn(message, category=FabricDeprecationWarning, stacklevel=stacklevel)


@rank_zero_only
def rank_zero_print(*args: Any, **kwargs: Any) -> None:
    """``print`` on global rank zero only."""
    print(*args, **kwargs)


class WarningCache:
    """Emits each distinct message once (on rank zero); use one cache per place that may repeat a message."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def warn(self, message: str, category: type[Warning] = FabricWarning, stacklevel: int = 5) -> None:
        if message not in self._seen:
            self._seen.add(message)
            rank_zero_warn(message, category=category, stacklevel=stacklevel)

    def deprecation(self, message: str, stacklevel: int = 5) -> None:
        if message not in self._seen:
            self._seen.add(message)
            rank_zero_deprecation(message, stacklevel=stacklevel)

    def info(self, message: str, stacklevel: int = 4) -> None:
        if message not in self._seen:
            self._seen.add(message)
            rank_zero_info(message, stacklevel=stacklevel)

    def clear(self) -> None:
        self._seen.clear()

    def __contains__(self, message: object) -> bool:
        return message in self._seen

    def __len__(self) -> int:
        return len(self._seen)
