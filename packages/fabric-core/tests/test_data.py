"""Distributed sampler injection by re-creating DataLoaders, sampler wrappers and worker seeding."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    Sampler,
    SequentialSampler,
    TensorDataset,
)

from fabric_core.data import (
    DistributedSamplerWrapper,
    ResumableDistributedSampler,
    add_worker_seeding,
    constructor_arguments,
    inject_distributed_sampler,
)

DATASET = TensorDataset(torch.arange(20))


def indices_seen(loader: DataLoader) -> list[int]:
    return [int(i) for (batch,) in loader for i in batch]


def shards(loader: DataLoader, replicas: int = 2) -> list[list[int]]:
    return [indices_seen(inject_distributed_sampler(loader, replicas, rank)) for rank in range(replicas)]


def test_sequential_loader_is_split_in_order_without_overlap() -> None:
    loader = DataLoader(DATASET, batch_size=3, num_workers=0, drop_last=False)
    first, second = shards(loader)
    assert first == list(range(0, 20, 2))
    assert second == list(range(1, 20, 2))
    rebuilt = inject_distributed_sampler(loader, 2, 0)
    assert type(rebuilt.sampler) is ResumableDistributedSampler
    assert not rebuilt.sampler.shuffle
    assert (rebuilt.batch_size, rebuilt.drop_last, rebuilt.num_workers) == (3, False, 0)


def test_shuffled_loader_gets_a_shuffling_sampler_seeded_from_the_global_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABRIC_GLOBAL_SEED", "7")
    loader = DataLoader(DATASET, batch_size=4, shuffle=True)
    first, second = shards(loader)
    assert sorted(first + second) == list(range(20))
    assert first != list(range(0, 20, 2))
    sampler = inject_distributed_sampler(loader, 2, 0).sampler
    assert sampler.shuffle
    assert sampler.seed == 7


def test_other_arguments_survive_the_rebuild() -> None:
    generator = torch.Generator()

    def collate(batch: list[Any]) -> torch.Tensor:
        return torch.stack([item[0] for item in batch]) * 10

    loader = DataLoader(
        DATASET, batch_size=5, drop_last=True, collate_fn=collate, generator=generator, timeout=0, pin_memory=False
    )
    rebuilt = inject_distributed_sampler(loader, 2, 1)
    assert rebuilt.collate_fn is collate
    assert rebuilt.generator is generator
    assert rebuilt.drop_last
    assert [batch.tolist() for batch in rebuilt] == [[10, 30, 50, 70, 90], [110, 130, 150, 170, 190]]


def test_iterable_datasets_and_distributed_samplers_are_left_alone() -> None:
    class Numbers(IterableDataset):  # type: ignore[type-arg]
        def __iter__(self) -> Iterator[int]:
            return iter(range(4))

    iterable = DataLoader(Numbers())
    assert inject_distributed_sampler(iterable, 2, 0) is iterable
    already = DataLoader(DATASET, sampler=DistributedSampler(DATASET, num_replicas=2, rank=0))
    assert inject_distributed_sampler(already, 2, 0) is already


class EveryThird(Sampler[int]):
    """A custom sampler: multiples of three first, then the rest, in reverse."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __iter__(self) -> Iterator[int]:
        order = [i for i in range(self.length) if i % 3 == 0] + [i for i in range(self.length) if i % 3]
        return iter(reversed(order))

    def __len__(self) -> int:
        return self.length


def test_custom_sampler_is_wrapped_and_sharded_in_its_own_order() -> None:
    loader = DataLoader(DATASET, batch_size=2, sampler=EveryThird(20))
    first, second = shards(loader)
    full = list(EveryThird(20))
    assert first == full[0::2]
    assert second == full[1::2]
    wrapper = inject_distributed_sampler(loader, 2, 0).sampler
    assert isinstance(wrapper, DistributedSamplerWrapper)
    assert len(wrapper) == 10


def test_sampler_without_length_cannot_be_wrapped() -> None:
    class Endless(Sampler[int]):
        def __iter__(self) -> Iterator[int]:
            return iter(range(3))

    with pytest.raises(TypeError, match="Endless has no length"):
        DistributedSamplerWrapper(Endless(), num_replicas=2, rank=0)


class PairBatchSampler(BatchSampler):
    """A custom batch sampler that keeps every batch of two and tags nothing else (re-creatable: stores its args)."""

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool, tag: str) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.tag = tag


def test_custom_batch_sampler_is_rebuilt_around_a_distributed_sampler() -> None:
    loader = DataLoader(DATASET, batch_sampler=PairBatchSampler(SequentialSampler(DATASET), 2, False, tag="x"))
    rebuilt = inject_distributed_sampler(loader, 2, 1)
    assert isinstance(rebuilt.batch_sampler, PairBatchSampler)
    assert rebuilt.batch_sampler.tag == "x"
    assert isinstance(rebuilt.batch_sampler.sampler, DistributedSampler)
    assert [batch[0].tolist() for batch in rebuilt] == [[1, 3], [5, 7], [9, 11], [13, 15], [17, 19]]


def test_custom_batch_sampler_that_cannot_be_sharded_has_a_clear_error() -> None:
    class Chunks(Sampler[list[int]]):
        def __iter__(self) -> Iterator[list[int]]:
            return iter([[0, 1], [2, 3]])

        def __len__(self) -> int:
            return 2

    loader = DataLoader(DATASET, batch_sampler=Chunks())
    with pytest.raises(TypeError, match=r"batch sampler Chunks cannot be sharded.*use_distributed_sampler=False"):
        inject_distributed_sampler(loader, 2, 0)


class LoaderWithStoredArgument(DataLoader):  # type: ignore[type-arg]
    def __init__(self, dataset: Any, scale: int, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.scale = scale


class LoaderWithLostArgument(DataLoader):  # type: ignore[type-arg]
    def __init__(self, dataset: Any, secret: int, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)


def test_dataloader_subclass_is_recreated_from_its_attributes() -> None:
    loader = LoaderWithStoredArgument(DATASET, scale=3, batch_size=4, shuffle=True, num_workers=0)
    rebuilt = inject_distributed_sampler(loader, 2, 0)
    assert type(rebuilt) is LoaderWithStoredArgument
    assert rebuilt.scale == 3
    assert rebuilt.batch_size == 4
    assert isinstance(rebuilt.sampler, DistributedSampler)
    assert rebuilt.sampler.shuffle


def test_dataloader_subclass_with_an_unstored_argument_explains_the_fix() -> None:
    loader = LoaderWithLostArgument(DATASET, secret=1, batch_size=4)
    with pytest.raises(TypeError, match=r"needs \['secret'\].*use_distributed_sampler=False"):
        inject_distributed_sampler(loader, 2, 0)


def test_constructor_arguments_read_back_a_plain_dataloader() -> None:
    loader = DataLoader(DATASET, batch_size=4, num_workers=2, persistent_workers=True, prefetch_factor=3)
    arguments = constructor_arguments(loader, base=DataLoader)
    assert arguments["dataset"] is DATASET
    assert (arguments["num_workers"], arguments["persistent_workers"], arguments["prefetch_factor"]) == (2, True, 3)
    assert isinstance(arguments["sampler"], SequentialSampler)
    assert "shuffle" not in arguments


class RandomItems(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Each item is a fresh draw from torch's generator: shows how dataloader workers are seeded."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.randint(0, 2**30, (1,))


def draws(loader: DataLoader) -> list[int]:
    return [int(x) for batch in loader for x in batch]


def test_workers_are_seeded_per_rank_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABRIC_SEED_WORKERS", "1")
    results = []
    for rank in (0, 0, 1):
        torch.manual_seed(3)
        loader = DataLoader(RandomItems(), batch_size=1, num_workers=2, multiprocessing_context="fork")
        add_worker_seeding(loader, rank)
        assert loader.worker_init_fn is not None
        results.append(draws(loader))
    assert results[0] == results[1]  # reproducible
    assert results[0] != results[2]  # distinct per rank


def test_worker_seeding_keeps_a_user_function_and_needs_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    def own(worker_id: int) -> None:
        torch.manual_seed(worker_id)

    loader = DataLoader(RandomItems(), num_workers=2, worker_init_fn=own)
    monkeypatch.setenv("FABRIC_SEED_WORKERS", "1")
    add_worker_seeding(loader, 0)
    assert loader.worker_init_fn is own
    monkeypatch.setenv("FABRIC_SEED_WORKERS", "0")
    plain = DataLoader(RandomItems(), num_workers=2)
    add_worker_seeding(plain, 0)
    assert plain.worker_init_fn is None


def test_resumable_sampler_skips_only_the_next_epoch() -> None:
    sampler = ResumableDistributedSampler(DATASET, num_replicas=2, rank=0, shuffle=True, seed=1)
    full = list(sampler)
    sampler.skip_next(3)
    assert list(sampler) == full[3:]
    assert list(sampler) == full
