"""The ``Logger`` base: what every fabric logger offers, and the rank-zero rule its logging methods follow."""

from __future__ import annotations

from abc import ABC, abstractmethod
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from torch import nn

from fabric_utils import rank_zero_only, rank_zero_warn


class _NoOpExperiment:
    """What a logger's ``experiment`` gives on ranks other than zero, in place of its writer, client or run: every
    method call does nothing."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._nothing

    @staticmethod
    def _nothing(*args: Any, **kwargs: Any) -> None:
        return None


class Logger(ABC):
    """Base class of experiment loggers. It satisfies the ``fabric_utils.Logger`` protocol that ``Fabric`` uses.

    Subclasses implement :attr:`name`, :attr:`version`, :meth:`log_metrics`, :meth:`log_hyperparams` and
    :meth:`save`, and decorate the methods that write with ``fabric_utils.rank_zero_only`` so that, in a run with
    several processes, only global rank zero writes. The methods defined here already follow that rule.
    """

    LOGGER_JOIN_CHAR = "-"
    """Joins a metric ``prefix`` to each metric name: ``prefix="train"`` turns ``loss`` into ``train-loss``."""

    @property
    @abstractmethod
    def name(self) -> str | None:
        """The experiment's name: the folder, under :attr:`root_dir`'s parent, that holds its versions."""

    @property
    @abstractmethod
    def version(self) -> int | str | None:
        """The experiment's version: an int ``N`` (folder ``version_N``) or a folder name."""

    @property
    def root_dir(self) -> str | None:
        """The folder that holds every version of this experiment, or ``None`` when the logger writes no files."""
        return None

    @property
    def log_dir(self) -> str | None:
        """The folder this run writes to, or ``None`` when the logger writes no files."""
        return None

    @property
    def group_separator(self) -> str:
        """The character that groups metric names into sections (``train/loss``)."""
        return "/"

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Record scalar ``metrics`` (name -> number or one-element tensor) at ``step``. Rank zero only."""

    @abstractmethod
    def log_hyperparams(self, params: dict[str, Any] | Namespace | None, *args: Any, **kwargs: Any) -> None:
        """Record the run's hyperparameters (a dict, possibly nested, or an ``argparse.Namespace``). Rank zero only."""

    @rank_zero_only
    def log_graph(self, model: nn.Module, input_array: Any | None = None) -> None:
        """Record the model's computational graph, where the backend can draw one. Rank zero only.

        This default warns that the backend cannot.
        """
        rank_zero_warn(f"{type(self).__name__} cannot record a model graph; `log_graph` does nothing.")

    def save(self) -> None:  # noqa: B027 - an optional hook, as in Lightning: loggers that buffer nothing skip it
        """Write everything buffered so far to storage. Rank zero only."""

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Finish the run (``status`` is e.g. ``"success"``, ``"failed"``): save what is buffered. Rank zero only."""
        self.save()
