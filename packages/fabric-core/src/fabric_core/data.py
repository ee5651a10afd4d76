"""Data helpers: distributed sampler injection by re-creating the user's DataLoader, sampler wrappers, worker seeding.

How a DataLoader is re-created: its constructor arguments are read back from the instance. For every parameter of
``type(loader).__init__`` the attribute of the same name is taken (``torch.utils.data.DataLoader`` stores all of
its arguments that way); parameters with defaults that the instance does not store keep their defaults, and a
subclass whose ``__init__`` takes ``**kwargs`` also gets DataLoader's own arguments. A subclass with a required
argument it does not store as an attribute cannot be re-created: the error says so and suggests
``use_distributed_sampler=False``. No global patching of ``DataLoader.__init__`` is involved, so user code runs
unchanged and loaders created anywhere (before ``Fabric``, in other threads) are handled the same way.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import os
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from fabric_core.loader import FabricDataLoader
from fabric_strategies import Strategy
from fabric_utils import apply_to_collection, seed_worker

SEED_ENV = "FABRIC_GLOBAL_SEED"
SEED_WORKERS_ENV = "FABRIC_SEED_WORKERS"

# DataLoader arguments that describe how indices are drawn; they are replaced, never copied
_SAMPLING_ARGS = ("sampler", "batch_sampler", "shuffle", "batch_size", "drop_last")


class ResumableDistributedSampler(DistributedSampler):  # type: ignore[type-arg]
    """A ``DistributedSampler`` that can skip the first indices of its next epoch (used to resume mid-epoch)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._skip = 0

    def skip_next(self, count: int) -> None:
        """Leave out the first ``count`` indices of the next iteration (once)."""
        self._skip = max(0, int(count))

    def __iter__(self) -> Iterator[Any]:
        indices = super().__iter__()
        skip, self._skip = self._skip, 0
        return itertools.islice(indices, skip, None) if skip else indices


class _SizedIndices(Sized):
    """Stands in for a dataset of ``len(sampler)`` items so DistributedSampler can shard positions."""

    def __init__(self, sampler: Sized) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)


class DistributedSamplerWrapper(ResumableDistributedSampler):
    """Shards the indices a custom sampler yields each epoch across processes.

    Every process draws the full order from its copy of ``sampler`` and keeps its own share, so the custom sampler
    must produce the same order on every rank (seed it identically, e.g. with ``fabric.seed_everything``).
    """

    def __init__(
        self,
        sampler: Sampler[Any],
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if not isinstance(sampler, Sized):
            raise TypeError(
                f"The sampler {type(sampler).__name__} has no length, so it cannot be sharded across processes."
                " Give it a __len__, shard it yourself, or pass use_distributed_sampler=False."
            )
        super().__init__(
            _SizedIndices(sampler),  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        inner_set_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(inner_set_epoch):
            inner_set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        order = list(self.sampler)
        return (order[position] for position in super().__iter__())


def has_iterable_dataset(loader: DataLoader) -> bool:  # type: ignore[type-arg]
    return isinstance(loader.dataset, IterableDataset)


def global_seed() -> int:
    value = os.environ.get(SEED_ENV)
    return int(value) if value is not None and value.lstrip("-").isdigit() else 0


def distributed_sampler_for(sampler: Any, dataset: Any, num_replicas: int, rank: int, seed: int) -> DistributedSampler:  # type: ignore[type-arg]
    """The distributed replacement of ``sampler``: a DistributedSampler for the standard samplers, else a wrapper."""
    if isinstance(sampler, (RandomSampler, SequentialSampler)):
        shuffle = isinstance(sampler, RandomSampler)
        return ResumableDistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
    return DistributedSamplerWrapper(sampler, num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed)


def constructor_arguments(obj: Any, base: type | None = None) -> dict[str, Any]:
    """The arguments ``type(obj).__init__`` needs to rebuild ``obj``, read from the instance's attributes."""
    cls = type(obj)
    parameters = _init_parameters(cls)
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()) and base is not None and base is not cls:
        parameters = {**_init_parameters(base), **parameters}
    arguments: dict[str, Any] = {}
    missing: list[str] = []
    for name, parameter in parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if name in obj.__dict__ or hasattr(obj, name):
            arguments[name] = getattr(obj, name)
        elif parameter.default is parameter.empty:
            missing.append(name)
    if missing:
        raise TypeError(
            f"Cannot re-create {cls.__name__} with a distributed sampler: its __init__ needs {missing}, which the"
            f" instance does not store as attributes of the same name. Store them (e.g. `self.{missing[0]} ="
            f" {missing[0]}`), or shard the data yourself and pass use_distributed_sampler=False."
        )
    return arguments


def _init_parameters(cls: type) -> dict[str, inspect.Parameter]:
    parameters = dict(inspect.signature(cls.__init__).parameters)  # type: ignore[misc]
    parameters.pop(next(iter(parameters)), None)  # self
    return parameters


def _check_shardable(batch_sampler: Any) -> None:
    """Raise a clear error for a custom batch sampler that fabric cannot re-create around a distributed sampler."""
    cls = type(batch_sampler)
    if not isinstance(batch_sampler, BatchSampler) or "sampler" not in _init_parameters(cls):
        raise TypeError(
            f"The dataloader's batch sampler {cls.__name__} cannot be sharded across processes: fabric can only"
            " re-create BatchSampler subclasses whose __init__ takes `sampler`. Shard the batches yourself (e.g."
            " give your batch sampler a DistributedSampler) and pass use_distributed_sampler=False."
        )


def _rebuild_batch_sampler(batch_sampler: Any, sampler: Sampler[Any]) -> Any:
    """A copy of a custom batch sampler that draws its indices from ``sampler``."""
    arguments = constructor_arguments(batch_sampler)
    arguments["sampler"] = sampler
    return type(batch_sampler)(**arguments)


def inject_distributed_sampler(
    loader: DataLoader,  # type: ignore[type-arg]
    num_replicas: int,
    rank: int,
    seed: int | None = None,
) -> DataLoader:  # type: ignore[type-arg]
    """Re-create ``loader`` so that each of ``num_replicas`` processes sees its own share of the data.

    The shuffling seed (``seed``, by default the one ``seed_everything`` stored) must be the same on every process.
    Iterable datasets and loaders already using a DistributedSampler are returned unchanged.
    """
    if has_iterable_dataset(loader):
        return loader
    batch_sampler = loader.batch_sampler
    uses_custom_batch_sampler = batch_sampler is not None and type(batch_sampler) is not BatchSampler
    if uses_custom_batch_sampler:
        _check_shardable(batch_sampler)
    inner = batch_sampler.sampler if uses_custom_batch_sampler else loader.sampler  # type: ignore[union-attr]
    if isinstance(inner, DistributedSampler):
        return loader
    seed = global_seed() if seed is None else seed
    sampler = distributed_sampler_for(inner, loader.dataset, num_replicas, rank, seed)
    arguments = constructor_arguments(loader, base=DataLoader)
    for name in _SAMPLING_ARGS:
        arguments.pop(name, None)
    if uses_custom_batch_sampler:
        arguments["batch_sampler"] = _rebuild_batch_sampler(batch_sampler, sampler)
    else:
        arguments["sampler"] = sampler
        arguments["batch_size"] = loader.batch_size
        arguments["drop_last"] = loader.drop_last
    return type(loader)(**arguments)


def add_worker_seeding(loader: DataLoader, rank: int) -> None:  # type: ignore[type-arg]
    """Give each worker on each rank its own reproducible seed when ``seed_everything(workers=True)`` asked for it.

    A ``worker_init_fn`` the user set is kept.
    """
    if os.environ.get(SEED_WORKERS_ENV) != "1" or loader.worker_init_fn is not None or loader.num_workers == 0:
        return
    loader.worker_init_fn = functools.partial(seed_worker, rank=rank)


def numbers_to_tensors(data: Any, device: torch.device) -> Any:
    """Every int and float in ``data`` (not bools) as a tensor on ``device``, so collectives can send it."""
    return apply_to_collection(data, (int, float), lambda x: torch.tensor(x, device=device), wrong_dtype=bool)


def setup_dataloader(
    strategy: Strategy, loader: DataLoader, use_distributed_sampler: bool, device: torch.device | None
) -> FabricDataLoader:
    """``loader`` for this process: re-created with a distributed sampler where the strategy shards data, its workers
    seeded per rank, processed by the strategy, and wrapped to move each batch to ``device`` (None: not moved)."""
    sampler_kwargs = strategy.distributed_sampler_kwargs
    if use_distributed_sampler and sampler_kwargs is not None:
        # every process must shuffle with the same seed, even if the user seeded the processes differently
        seed = strategy.broadcast(global_seed(), src=0) if strategy.world_size > 1 else global_seed()
        loader = inject_distributed_sampler(loader, sampler_kwargs["num_replicas"], sampler_kwargs["rank"], seed)
    add_worker_seeding(loader, strategy.global_rank)
    processed = strategy.process_dataloader(loader)
    # a strategy that returns its own loader type (e.g. an XLA device loader) moves the batches itself
    return FabricDataLoader(processed, device=device if isinstance(processed, DataLoader) else None)
