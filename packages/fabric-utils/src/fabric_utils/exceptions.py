"""Exceptions and warning categories shared by every fabric package."""

from __future__ import annotations


class FabricWarning(UserWarning):
    """Base category of the warnings that fabric emits."""


class PossibleUserWarning(FabricWarning):
    """A warning about something that is probably, but not certainly, a mistake."""


class FabricDeprecationWarning(DeprecationWarning):
    """A feature that will be removed."""


class UnknownNameError(ValueError):
    """A name was looked up in a registry that does not know it."""


class MissingDependencyError(ModuleNotFoundError):
    """An optional dependency is needed for the requested feature but is not installed."""
