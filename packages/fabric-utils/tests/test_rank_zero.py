from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import pytest

from fabric_utils import (
    FabricDeprecationWarning,
    FabricWarning,
    PossibleUserWarning,
    WarningCache,
    rank_from_environment,
    rank_zero_debug,
    rank_zero_deprecation,
    rank_zero_info,
    rank_zero_only,
    rank_zero_print,
    rank_zero_warn,
)

RANK_VARIABLES = ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "LOCAL_RANK")


@pytest.fixture(autouse=True)
def clean_rank(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in RANK_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    rank_zero_only.rank = None
    yield
    rank_zero_only.rank = None


def test_rank_defaults_to_zero_without_launcher_variables() -> None:
    assert rank_from_environment() == 0
    assert rank_zero_only.rank == 0


@pytest.mark.parametrize("variable", RANK_VARIABLES)
def test_rank_is_read_from_each_launcher_variable(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, "3")
    assert rank_from_environment() == 3
    assert rank_zero_only.rank == 3


def test_global_rank_variables_win_over_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("SLURM_PROCID", "5")
    assert rank_from_environment() == 5
    monkeypatch.setenv("RANK", "2")
    assert rank_from_environment() == 2


def test_unparsable_rank_variables_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "not-a-number")
    monkeypatch.setenv("PMI_RANK", "4")
    assert rank_from_environment() == 4


def test_the_environment_is_read_when_the_rank_is_asked_not_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    @rank_zero_only
    def record() -> str:
        calls.append(1)
        return "ran"

    monkeypatch.setenv("RANK", "1")
    assert record() is None
    monkeypatch.setenv("RANK", "0")
    assert record() == "ran"
    assert calls == [1]


def test_settable_rank_overrides_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "0")
    rank_zero_only.rank = 2
    assert rank_zero_only.rank == 2

    @rank_zero_only
    def add(a: int, b: int) -> int:
        return a + b

    assert add(1, 2) is None
    rank_zero_only.rank = 0
    assert add(1, b=2) == 3
    rank_zero_only.rank = None
    monkeypatch.setenv("RANK", "7")
    assert rank_zero_only.rank == 7, "None goes back to the environment"


def test_other_ranks_get_the_default() -> None:
    def answer() -> int:
        return 42

    wrapped = rank_zero_only(answer, default=-1)
    assert wrapped() == 42
    assert wrapped.__name__ == "answer"
    rank_zero_only.rank = 1
    assert wrapped() == -1


@pytest.mark.parametrize("bad", [-1, "0", 1.0, True])
def test_invalid_ranks_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match=f"non-negative int or None, got {bad!r}"):
        rank_zero_only.rank = bad  # type: ignore[assignment]


def warn_from_library() -> None:
    rank_zero_warn("library says hi")


def test_rank_zero_warn_points_at_the_user_code_calling_the_library() -> None:
    with pytest.warns(FabricWarning, match="library says hi") as record:
        warn_from_library()  # this line is reported
    assert record[0].filename == __file__
    assert (
        record[0].lineno == test_rank_zero_warn_points_at_the_user_code_calling_the_library.__code__.co_firstlineno + 2
    )


def test_rank_zero_warn_category_and_silence_on_other_ranks() -> None:
    with pytest.warns(PossibleUserWarning, match="maybe wrong"):
        rank_zero_warn("maybe wrong", category=PossibleUserWarning)
    rank_zero_only.rank = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rank_zero_warn("not on rank 1")
        rank_zero_deprecation("not on rank 1 either")


def test_rank_zero_deprecation() -> None:
    with pytest.warns(FabricDeprecationWarning, match="going away"):
        rank_zero_deprecation("going away")


def test_rank_zero_info_and_debug_log_on_the_fabric_logger(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="fabric"):
        rank_zero_info("info %s", "message")
        rank_zero_debug("debug message")
        rank_zero_only.rank = 3
        rank_zero_info("hidden")
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("fabric", logging.INFO, "info message"),
        ("fabric", logging.DEBUG, "debug message"),
    ]
    assert caplog.records[0].filename == "test_rank_zero.py", "the record names the caller, not the helper"


def test_rank_zero_print(capsys: pytest.CaptureFixture[str]) -> None:
    rank_zero_print("hello", 1, sep="-")
    rank_zero_only.rank = 1
    rank_zero_print("hidden")
    assert capsys.readouterr().out == "hello-1\n"


def test_warning_cache_warns_once_per_message() -> None:
    cache = WarningCache()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(3):
            cache.warn("first")
            cache.warn("second", category=PossibleUserWarning)
    assert [(w.category, str(w.message)) for w in record] == [(FabricWarning, "first"), (PossibleUserWarning, "second")]
    assert "first" in cache
    assert len(cache) == 2
    cache.clear()
    assert "first" not in cache
    with pytest.warns(FabricWarning, match="first"):
        cache.warn("first")


def test_warning_cache_deprecation_and_info(caplog: pytest.LogCaptureFixture) -> None:
    cache = WarningCache()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cache.deprecation("old")
        cache.deprecation("old")
    assert [(w.category, str(w.message)) for w in record] == [(FabricDeprecationWarning, "old")]
    with caplog.at_level(logging.INFO, logger="fabric"):
        cache.info("note")
        cache.info("note")
    assert [r.getMessage() for r in caplog.records] == ["note"]


def test_warning_cache_is_silent_on_other_ranks() -> None:
    cache = WarningCache()
    rank_zero_only.rank = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.warn("quiet")
