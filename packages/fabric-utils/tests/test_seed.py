from __future__ import annotations

import functools
import logging
import os
import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from fabric_utils import (
    capture_rng_state,
    max_seed_value,
    min_seed_value,
    rank_zero_only,
    reset_seed,
    restore_rng_state,
    seed_everything,
    seed_worker,
    worker_seed,
)

SEED_ENV = "FABRIC_GLOBAL_SEED"
WORKERS_ENV = "FABRIC_SEED_WORKERS"


@pytest.fixture(autouse=True)
def seed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start without the seed variables; monkeypatch puts back whatever was there (setenv records the original)."""
    for key in (SEED_ENV, WORKERS_ENV):
        monkeypatch.setenv(key, "0")
        monkeypatch.delenv(key)


@pytest.fixture
def restore_rank() -> Iterator[None]:
    yield
    rank_zero_only.rank = None


def draws() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_same_seed_gives_the_same_numbers_in_every_library() -> None:
    assert seed_everything(123) == 123
    first = draws()
    seed_everything(123)
    assert draws() == first
    seed_everything(124)
    assert draws() != first


def test_seed_is_stored_for_later_processes() -> None:
    seed_everything(7, workers=True)
    assert os.environ[SEED_ENV] == "7"
    assert os.environ[WORKERS_ENV] == "1"
    seed_everything(8)
    assert os.environ[WORKERS_ENV] == "0"


def test_no_seed_uses_the_environment_then_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    assert seed_everything() == 0
    monkeypatch.setenv(SEED_ENV, "99")
    assert seed_everything() == 99
    expected = draws()
    seed_everything(99)
    assert draws() == expected


def test_bad_seed_in_the_environment_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SEED_ENV, "abc")
    with pytest.raises(ValueError, match="FABRIC_GLOBAL_SEED='abc' is not an integer seed"):
        seed_everything()
    monkeypatch.setenv(SEED_ENV, "-4")
    with pytest.raises(ValueError, match="seed -4 is out of range"):
        seed_everything()


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_out_of_range_seeds_are_rejected(seed: int) -> None:
    with pytest.raises(ValueError, match=rf"seed {seed} is out of range: choose one in \[0, 4294967295\]"):
        seed_everything(seed)
    assert SEED_ENV not in os.environ, "a rejected seed must not be stored"


@pytest.mark.parametrize("seed", [1.5, "7", True, [1]])
def test_non_integer_seeds_are_rejected(seed: object) -> None:
    with pytest.raises(TypeError, match=rf"must be an int, got {seed!r}".replace("[", r"\[").replace("]", r"\]")):
        seed_everything(seed)  # type: ignore[arg-type]


def test_numpy_integers_are_accepted() -> None:
    assert seed_everything(np.int64(5)) == 5  # type: ignore[arg-type]
    assert type(seed_everything(np.uint32(6))) is int  # type: ignore[arg-type]


def test_boundary_seeds_are_accepted() -> None:
    assert seed_everything(0) == 0
    assert seed_everything(2**32 - 1) == 2**32 - 1


def test_seed_is_logged_on_rank_zero_only(caplog: pytest.LogCaptureFixture, restore_rank: None) -> None:
    with caplog.at_level(logging.INFO, logger="fabric"):
        seed_everything(11)
        seed_everything(12, verbose=False)
        rank_zero_only.rank = 1
        seed_everything(13)
    assert [r.getMessage() for r in caplog.records] == ["Seed set to 11"]


def test_reset_seed_reapplies_the_stored_seed() -> None:
    reset_seed()  # no stored seed: nothing happens
    assert SEED_ENV not in os.environ
    seed_everything(31, workers=True)
    expected = draws()
    torch.rand(10)
    reset_seed()
    assert draws() == expected
    assert os.environ[WORKERS_ENV] == "1"


def test_rng_state_round_trip() -> None:
    seed_everything(3)
    state = capture_rng_state()
    assert set(state) >= {"python", "torch", "numpy"}
    expected = draws()
    restore_rng_state(state)
    assert draws() == expected


def test_worker_seed_is_reproducible_and_distinct() -> None:
    seeds = {worker_seed(42, worker, rank) for worker in range(8) for rank in range(8)}
    assert len(seeds) == 64
    assert worker_seed(42, 1, 2) == worker_seed(42, 1, 2)
    assert worker_seed(42, 1, 2) != worker_seed(43, 1, 2)
    assert all(0 <= s < 2**32 for s in seeds)


class WorkerDraws(Dataset):  # type: ignore[type-arg]
    """Each item reports which worker produced it and one draw from each library."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[int, int, float, float, float]:
        info = torch.utils.data.get_worker_info()
        assert info is not None
        return info.id, index, random.random(), float(np.random.rand()), torch.rand(1).item()


def load_draws(seed: int, init_fn: object) -> dict[int, tuple[tuple[float, float, float], ...]]:
    """Draws by worker id from a real 2-worker DataLoader after ``seed_everything(seed)``."""
    seed_everything(seed, verbose=False)
    loader = DataLoader(WorkerDraws(), batch_size=None, num_workers=2, worker_init_fn=init_fn)  # type: ignore[arg-type]
    by_worker: dict[int, list[tuple[float, float, float]]] = {0: [], 1: []}
    for worker, _index, py, npy, pt in loader:
        by_worker[int(worker)].append((float(py), float(npy), float(pt)))
    return {w: tuple(v) for w, v in by_worker.items()}


def test_seed_worker_gives_each_worker_and_rank_its_own_reproducible_stream(restore_rank: None) -> None:
    rank0 = load_draws(5, functools.partial(seed_worker, rank=0))
    rank1 = load_draws(5, functools.partial(seed_worker, rank=1))
    rank1_again = load_draws(5, functools.partial(seed_worker, rank=1))
    assert rank1 == rank1_again, "same seed, same rank: same draws"
    streams = [rank0[0], rank0[1], rank1[0], rank1[1]]
    for library in range(3):  # python, numpy, torch
        firsts = [stream[0][library] for stream in streams]
        assert len(set(firsts)) == 4, f"library {library}: every (worker, rank) pair must draw differently"
    # the default rank comes from rank_zero_only.rank, which forked workers inherit
    rank_zero_only.rank = 1
    assert load_draws(5, seed_worker) == rank1


def test_seed_bounds_are_public_and_enforced() -> None:
    assert (min_seed_value, max_seed_value) == (0, 2**32 - 1)
    assert seed_everything(max_seed_value) == max_seed_value
    with pytest.raises(ValueError, match=rf"\[{min_seed_value}, {max_seed_value}\]"):
        seed_everything(max_seed_value + 1)
