"""Exceptions and warning categories shared by every fabric package."""

from __future__ import annotations

import warnings


class FabricWarning(UserWarning):
    """Base category of the warnings that fabric emits."""


class PossibleUserWarning(FabricWarning):
    """A warning about something that is probably, but not certainly, a mistake."""


def disable_possible_user_warnings(module: str = "") -> None:
    """Silence every :class:`PossibleUserWarning` from now on, or only those raised in the modules whose name starts
    with the regular expression ``module`` (e.g. ``"fabric_core.data"``); other warnings still show."""
    if not isinstance(module, str):
        raise TypeError(f"module must be a module name (a str, '' for all modules), got {module!r}")
    warnings.filterwarnings("ignore", category=PossibleUserWarning, module=module)


class FabricDeprecationWarning(DeprecationWarning):
    """A feature that will be removed."""


class UnknownNameError(ValueError):
    """A name was looked up in a registry that does not know it."""


class MissingDependencyError(ModuleNotFoundError):
    """An optional dependency is needed for the requested feature but is not installed."""
