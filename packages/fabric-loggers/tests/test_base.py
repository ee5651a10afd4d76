import warnings
from collections.abc import Mapping
from typing import Any

import pytest
from torch import nn

import fabric_utils
from fabric_loggers import Logger
from fabric_utils import FabricWarning, rank_zero_only


class ListLogger(Logger):
    """A complete logger that keeps everything in lists, as a user-written logger would."""

    def __init__(self) -> None:
        self.metrics: list[tuple[dict[str, Any], int | None]] = []
        self.params: list[Any] = []
        self.saves = 0

    @property
    def name(self) -> str:
        return "lists"

    @property
    def version(self) -> int:
        return 3

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self.metrics.append((dict(metrics), step))

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.params.append(params)

    @rank_zero_only
    def save(self) -> None:
        self.saves += 1


def test_the_base_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        Logger()  # type: ignore[abstract]

    class OnlyName(Logger):
        @property
        def name(self) -> str:
            return "x"

    with pytest.raises(TypeError, match="log_metrics"):
        OnlyName()  # type: ignore[abstract]


def test_save_is_optional_as_in_lightning():
    class NoBuffer(Logger):
        name = "plain"
        version = 0

        def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
            pass

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            pass

    logger = NoBuffer()
    logger.save()
    logger.finalize("success")


def test_defaults_of_a_complete_subclass():
    logger = ListLogger()
    assert isinstance(logger, fabric_utils.Logger)
    assert logger.root_dir is None
    assert logger.log_dir is None
    assert logger.group_separator == "/"
    assert Logger.LOGGER_JOIN_CHAR == "-"
    logger.log_metrics({"a": 1.0}, step=2)
    logger.log_hyperparams({"lr": 0.1})
    assert logger.metrics == [({"a": 1.0}, 2)]
    assert logger.params == [{"lr": 0.1}]


def test_finalize_saves():
    logger = ListLogger()
    logger.finalize("success")
    logger.finalize("failed")
    assert logger.saves == 2


def test_default_log_graph_warns_that_it_cannot_draw():
    logger = ListLogger()
    with pytest.warns(FabricWarning, match="ListLogger cannot record a model graph"):
        logger.log_graph(nn.Linear(2, 2))


def test_base_methods_do_nothing_off_rank_zero(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    logger = ListLogger()
    logger.finalize("success")
    logger.log_metrics({"a": 1.0})
    assert logger.saves == 0
    assert logger.metrics == []
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        logger.log_graph(nn.Linear(2, 2))
    assert records == []
