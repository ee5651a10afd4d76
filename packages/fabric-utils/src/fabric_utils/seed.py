"""Seeding of Python, NumPy and torch, and of dataloader workers."""

from __future__ import annotations

import os
import random
from typing import Any

import torch

from fabric_utils.imports import NUMPY
from fabric_utils.rank_zero import rank_from_environment, rank_zero_info

SEED_ENV = "FABRIC_GLOBAL_SEED"
SEED_WORKERS_ENV = "FABRIC_SEED_WORKERS"

_MAX_SEED = 2**32 - 1


def seed_everything(seed: int | None = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed ``random``, NumPy (if installed) and torch on every device; return the seed.

    The seed is stored in ``FABRIC_GLOBAL_SEED`` so processes started later (spawned ranks, dataloader workers)
    can reuse it; with ``workers=True`` dataloader workers are seeded through :func:`seed_worker`.
    """
    if seed is None:
        env_seed = os.environ.get(SEED_ENV)
        seed = int(env_seed) if env_seed is not None else 0
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"The seed must be an int, got {seed!r} of type {type(seed).__name__}")
    if not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"The seed {seed} is out of range: choose one in [0, {_MAX_SEED}]")
    if verbose:
        rank_zero_info(f"Seed set to {seed}")
    os.environ[SEED_ENV] = str(seed)
    os.environ[SEED_WORKERS_ENV] = str(int(workers))
    _seed_libraries(seed)
    return seed


def _seed_libraries(seed: int) -> None:
    random.seed(seed)
    if NUMPY.available:
        import numpy as np

        np.random.seed(seed)
    torch.manual_seed(seed)


def reset_seed() -> None:
    """Re-apply the seed stored by :func:`seed_everything` (e.g. in a freshly spawned process)."""
    seed = os.environ.get(SEED_ENV)
    if seed is None:
        return
    seed_everything(int(seed), workers=bool(int(os.environ.get(SEED_WORKERS_ENV, "0"))), verbose=False)


def worker_seed(base_seed: int, worker_id: int, rank: int) -> int:
    """A distinct, reproducible 32-bit seed for each (base seed, worker, rank) triple."""
    sequence = torch.Generator().manual_seed((base_seed * 1_000_003 + rank * 7919 + worker_id) % _MAX_SEED)
    return int(torch.randint(0, _MAX_SEED, (1,), generator=sequence).item())


def seed_worker(worker_id: int, rank: int | None = None) -> None:
    """``worker_init_fn`` for DataLoader: gives each worker on each rank its own reproducible seed."""
    torch_seed = torch.initial_seed()
    rank = rank_from_environment() if rank is None else rank
    seed = worker_seed(torch_seed % _MAX_SEED, worker_id, rank)
    _seed_libraries(seed)


def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator, for checkpoints."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if NUMPY.available:
        import numpy as np

        state["numpy"] = np.random.get_state()
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state and NUMPY.available:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
