"""Seeding of Python, NumPy and torch, and of dataloader workers."""

from __future__ import annotations

import hashlib
import operator
import os
import random
from typing import Any

import torch

from fabric_utils.imports import NUMPY
from fabric_utils.rank_zero import rank_zero_info, rank_zero_only

SEED_ENV = "FABRIC_GLOBAL_SEED"
SEED_WORKERS_ENV = "FABRIC_SEED_WORKERS"

min_seed_value = 0
"""The smallest seed that :func:`seed_everything` accepts."""
max_seed_value = 2**32 - 1
"""The largest seed that :func:`seed_everything` accepts (NumPy's legacy seeding takes 32 bits)."""


def _check_seed(seed: object) -> int:
    if isinstance(seed, (bool, float)):
        raise TypeError(f"The seed must be an int, got {seed!r} of type {type(seed).__name__}")
    try:
        value = operator.index(seed)  # type: ignore[arg-type] # int and integer-like objects such as numpy integers
    except TypeError:
        raise TypeError(f"The seed must be an int, got {seed!r} of type {type(seed).__name__}") from None
    if not min_seed_value <= value <= max_seed_value:
        raise ValueError(f"The seed {value} is out of range: choose one in [{min_seed_value}, {max_seed_value}]")
    return value


def _seed_from_environment() -> int:
    value = os.environ.get(SEED_ENV)
    if value is None:
        return 0
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"{SEED_ENV}={value!r} is not an integer seed in [{min_seed_value}, {max_seed_value}]"
        ) from None


def seed_everything(seed: int | None = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed ``random``, NumPy (if installed) and torch on every device; return the seed.

    Without ``seed``, the value of ``FABRIC_GLOBAL_SEED`` is used, else 0. The seed is stored in
    ``FABRIC_GLOBAL_SEED`` so processes started later (spawned ranks) reuse it, and ``workers`` in
    ``FABRIC_SEED_WORKERS``: with ``workers=True`` a Fabric dataloader gets :func:`seed_worker` as its
    ``worker_init_fn``, which gives every worker on every rank its own reproducible seed.
    """
    value = _seed_from_environment() if seed is None else seed
    value = _check_seed(value)
    if verbose:
        rank_zero_info(f"Seed set to {value}")
    os.environ[SEED_ENV] = str(value)
    os.environ[SEED_WORKERS_ENV] = str(int(workers))
    _seed_libraries(value)
    return value


def _seed_libraries(seed: int) -> None:
    random.seed(seed)
    if NUMPY.available:
        import numpy as np

        np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too, lazily: CUDA is not initialised here


def reset_seed() -> None:
    """Re-apply the seed stored by :func:`seed_everything` (e.g. in a freshly spawned process); no-op without one."""
    seed = os.environ.get(SEED_ENV)
    if seed is None:
        return
    seed_everything(int(seed), workers=os.environ.get(SEED_WORKERS_ENV, "0") == "1", verbose=False)


def worker_seed(base_seed: int, worker_id: int, rank: int) -> int:
    """A reproducible 32-bit seed, distinct for each (base seed, worker, rank) triple in practice."""
    key = f"fabric-worker-seed:{base_seed}:{rank}:{worker_id}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little")


def seed_worker(worker_id: int, rank: int | None = None) -> None:
    """``worker_init_fn`` for a DataLoader: gives each worker on each rank its own reproducible seed.

    PyTorch already seeds worker ``i`` with ``base + i``, where ``base`` is drawn from the main process's generator;
    but every rank that called ``seed_everything`` with the same seed draws the same ``base``, so workers would repeat
    each other's random augmentations across ranks. This mixes the global rank in and reseeds ``random``, NumPy and
    torch. ``rank`` defaults to ``rank_zero_only.rank``; bind it with ``functools.partial(seed_worker, rank=r)`` when
    workers are spawned rather than forked (a spawned worker only sees the environment).
    """
    rank = rank_zero_only.rank if rank is None else rank
    _seed_libraries(worker_seed(torch.initial_seed() % max_seed_value, worker_id, rank))


def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator (Python, NumPy, torch CPU, CUDA when initialised), for checkpoints."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if NUMPY.available:
        import numpy as np

        state["numpy"] = np.random.get_state()
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back the generators captured by :func:`capture_rng_state`."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state and NUMPY.available:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
