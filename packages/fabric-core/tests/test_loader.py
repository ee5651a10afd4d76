"""The dataloader wrapper: device transfer, set_epoch, and exact mid-epoch resume from its state."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, TensorDataset

from fabric_core.data import inject_distributed_sampler
from fabric_core.loader import FabricDataLoader

DATASET = TensorDataset(torch.arange(24))


def ids(batch: Any) -> list[int]:
    tensor = batch[0] if isinstance(batch, (list, tuple)) else batch
    return [int(x) for x in tensor.flatten()]


def test_batches_pass_through_and_attributes_are_the_loaders() -> None:
    loader = DataLoader(DATASET, batch_size=5)
    wrapped = FabricDataLoader(loader, device=torch.device("cpu"))
    assert len(wrapped) == 5
    assert wrapped.batch_size == 5
    assert wrapped.dataset is DATASET
    assert wrapped.dataloader is loader
    assert wrapped.device == torch.device("cpu")
    assert [ids(b) for b in wrapped] == [ids(b) for b in loader]


def test_set_epoch_is_called_on_every_new_iteration() -> None:
    sampler = DistributedSampler(DATASET, num_replicas=2, rank=0, shuffle=True, seed=3)
    wrapped = FabricDataLoader(DataLoader(DATASET, batch_size=4, sampler=sampler))
    epochs = [[i for b in wrapped for i in ids(b)] for _ in range(3)]
    for epoch, seen in enumerate(epochs):
        reference = DistributedSampler(DATASET, num_replicas=2, rank=0, shuffle=True, seed=3)
        reference.set_epoch(epoch)
        assert seen == list(reference)
    assert epochs[0] != epochs[1]


def test_an_epoch_left_early_still_counts() -> None:
    sampler = DistributedSampler(DATASET, num_replicas=1, rank=0, shuffle=True, seed=0)
    wrapped = FabricDataLoader(DataLoader(DATASET, batch_size=4, sampler=sampler))
    next(iter(wrapped))
    assert wrapped.state_dict()["epoch"] == 0
    list(wrapped)
    assert sampler.epoch == 1
    assert wrapped.state_dict()["epoch"] == 2
    assert wrapped.state_dict()["batches_consumed"] == 0


class ReverseSampler(Sampler[int]):
    """A custom sampler that draws its order from torch's global generator."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.length).tolist())

    def __len__(self) -> int:
        return self.length


class NoisyItems(Dataset):  # type: ignore[type-arg]
    """Items carry a random draw from the generator of whichever process loads them (tests worker seeding)."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([index, int(torch.randint(0, 1000, (1,)))])


def train(
    make_loader: Callable[[], FabricDataLoader], epochs: int, stop: tuple[int, int] | None = None
) -> tuple[list[list[int]], list[float], dict[str, Any] | None]:
    """Iterate like a training loop that draws random numbers between batches (dropout, augmentation...).

    With ``stop=(epoch, batch)`` it stops after that batch and returns the checkpoint a user would save.
    """
    loader = make_loader()
    batches: list[list[int]] = []
    draws: list[float] = []
    for epoch in range(epochs):
        for index, batch in enumerate(loader):
            batches.append(ids(batch))
            draws.append(float(torch.rand(1)))
            if stop == (epoch, index):
                return batches, draws, {"loader": loader.state_dict(), "rng": torch.get_rng_state()}
    return batches, draws, None


def resume(
    make_loader: Callable[[], FabricDataLoader], epochs: int, checkpoint: dict[str, Any], start_epoch: int
) -> tuple[list[list[int]], list[float]]:
    torch.manual_seed(12345)  # a fresh process with its own seed
    loader = make_loader()
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    loader.load_state_dict(checkpoint["loader"])
    torch.set_rng_state(checkpoint["rng"])
    return run_epochs(loader, epochs - start_epoch)


def run_epochs(loader: FabricDataLoader, epochs: int) -> tuple[list[list[int]], list[float]]:
    """The batches of ``epochs`` epochs and one random draw per step (what a training loop's dropout would take)."""
    batches: list[list[int]] = []
    draws: list[float] = []
    for _ in range(epochs):
        for batch in loader:
            batches.append(ids(batch))
            draws.append(float(torch.rand(1)))
    return batches, draws


def shuffled() -> FabricDataLoader:
    return FabricDataLoader(DataLoader(DATASET, batch_size=5, shuffle=True))


def shuffled_with_generator() -> FabricDataLoader:
    return FabricDataLoader(DataLoader(DATASET, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(4)))


def distributed() -> FabricDataLoader:
    return FabricDataLoader(inject_distributed_sampler(DataLoader(DATASET, batch_size=3, shuffle=True), 2, 1))


def custom_sampler() -> FabricDataLoader:
    return FabricDataLoader(DataLoader(DATASET, batch_size=4, sampler=ReverseSampler(len(DATASET))))


def with_workers() -> FabricDataLoader:
    loader = DataLoader(NoisyItems(), batch_size=3, shuffle=True, num_workers=2, multiprocessing_context="fork")
    return FabricDataLoader(loader)


@pytest.mark.parametrize("make_loader", [shuffled, shuffled_with_generator, distributed, custom_sampler, with_workers])
@pytest.mark.parametrize("stop", [(0, 1), (1, 0), (1, 2)])
def test_resume_mid_epoch_sees_exactly_the_batches_of_an_uninterrupted_run(
    make_loader: Callable[[], FabricDataLoader], stop: tuple[int, int]
) -> None:
    epochs = 3
    torch.manual_seed(0)
    full_batches, full_draws, _ = train(make_loader, epochs)
    torch.manual_seed(0)
    first_batches, first_draws, checkpoint = train(make_loader, epochs, stop=stop)
    assert checkpoint is not None
    assert checkpoint["loader"]["batches_consumed"] == stop[1] + 1
    rest_batches, rest_draws = resume(make_loader, epochs, checkpoint, start_epoch=stop[0])
    assert first_batches + rest_batches == full_batches
    assert first_draws + rest_draws == full_draws


def through_a_file(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def resume_without_restoring_rng(
    make_loader: Callable[[], FabricDataLoader], epochs: int, state: dict[str, Any], start_epoch: int, seed: int
) -> tuple[list[list[int]], list[float]]:
    """A new process that seeds itself (as the script does) and loads only the loader's state, not the RNG's."""
    torch.manual_seed(seed)
    loader = make_loader()
    loader.load_state_dict(through_a_file(state))
    return run_epochs(loader, epochs - start_epoch)


@pytest.mark.parametrize("make_loader", [shuffled, shuffled_with_generator, custom_sampler, with_workers, distributed])
@pytest.mark.parametrize("stop", [(0, 1), (1, 2), (0, -1)])
@pytest.mark.parametrize("seed", [0, 777])
def test_the_epochs_after_a_resume_are_shuffled_as_in_an_uninterrupted_run(
    make_loader: Callable[[], FabricDataLoader], stop: tuple[int, int], seed: int
) -> None:
    """A fresh loader resumed mid-epoch (or after its last batch, before the epoch's end: ``-1``) without the user
    restoring torch's RNG: the rest of that epoch and the next two are those of an uninterrupted run, as are the
    random numbers drawn in the loop. A plain RandomSampler draws each epoch's order from torch's default generator."""
    if stop[1] == -1:
        stop = (stop[0], len(make_loader()) - 1)
    epochs = stop[0] + 3
    torch.manual_seed(0)
    full_batches, full_draws, _ = train(make_loader, epochs)
    torch.manual_seed(0)
    first_batches, first_draws, checkpoint = train(make_loader, epochs, stop=stop)
    assert checkpoint is not None
    assert checkpoint["loader"]["in_progress"]
    rest_batches, rest_draws = resume_without_restoring_rng(make_loader, epochs, checkpoint["loader"], stop[0], seed)
    assert first_batches + rest_batches == full_batches
    assert first_draws + rest_draws == full_draws


@pytest.mark.parametrize("make_loader", [shuffled, shuffled_with_generator, custom_sampler, distributed])
def test_a_resume_after_a_finished_epoch_shuffles_the_next_epochs_alike(
    make_loader: Callable[[], FabricDataLoader],
) -> None:
    torch.manual_seed(0)
    full = [[i for b in loader for i in ids(b)] for loader in [make_loader()] for _ in range(3)]
    torch.manual_seed(0)
    loader = make_loader()
    first = [i for b in loader for i in ids(b)]
    state = loader.state_dict()
    assert (state["epoch"], state["in_progress"]) == (1, False)
    torch.manual_seed(0)  # the new process seeds itself alike and builds its loader
    resumed = make_loader()
    resumed.load_state_dict(through_a_file(state))
    assert [first] + [[i for b in resumed for i in ids(b)] for _ in range(2)] == full


def test_a_state_without_generator_states_still_loads() -> None:
    """States written before ``rng`` was recorded resume at the right batch (the generators are left alone)."""
    torch.manual_seed(0)
    full = [ids(b) for b in distributed()]
    torch.manual_seed(0)
    loader = distributed()
    iterator = iter(loader)
    first = [ids(next(iterator)) for _ in range(2)]
    state = loader.state_dict()
    del state["rng"]
    resumed = distributed()
    resumed.load_state_dict(state)
    assert first + [ids(b) for b in resumed] == full


def test_resume_at_an_epoch_boundary_starts_the_next_epoch() -> None:
    torch.manual_seed(0)
    full_batches, _, _ = train(distributed, 2)
    torch.manual_seed(0)
    loader = distributed()
    first = [ids(b) for b in loader]
    state = loader.state_dict()
    assert (state["epoch"], state["batches_consumed"], state["in_progress"]) == (1, 0, False)
    resumed = distributed()
    resumed.load_state_dict(state)
    assert first + [ids(b) for b in resumed] == full_batches


def test_the_sampler_seed_is_restored() -> None:
    loader = distributed()
    loader.dataloader.sampler.seed = 99
    state = loader.state_dict()
    assert state["sampler_seed"] == 99
    fresh = distributed()
    fresh.load_state_dict(state)
    assert fresh.dataloader.sampler.seed == 99


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"epoch": 0}, "missing"),
        ({"epoch": -1, "batches_consumed": 0, "in_progress": False, "sampler_seed": None, "epoch_rng": None}, "epoch"),
        ({"epoch": 0, "batches_consumed": "2", "in_progress": True, "sampler_seed": None, "epoch_rng": None}, "'2'"),
        (
            {"epoch": 0, "batches_consumed": 0, "in_progress": False, "sampler_seed": None, "epoch_rng": 3},
            "epoch_rng=3",
        ),
        (
            {
                "epoch": 0,
                "batches_consumed": 0,
                "in_progress": False,
                "sampler_seed": None,
                "epoch_rng": None,
                "rng": {},
            },
            "rng=",
        ),
    ],
)
def test_invalid_state_is_refused(state: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        shuffled().load_state_dict(state)
