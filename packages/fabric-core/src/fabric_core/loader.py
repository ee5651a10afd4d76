"""The dataloader wrapper returned by ``Fabric.setup_dataloaders``: device transfer, ``set_epoch`` and exact resume.

Resuming. ``state_dict()`` records the epoch, how many batches of it were handed out, the seed of a distributed
sampler, the state of the random generators the loader draws from when an epoch starts (torch's default generator,
the loader's and the samplers' own generators) as it is now and, for an epoch in progress, as it was when that
epoch's iterator was created. ``load_state_dict`` puts those generators back to their state at the checkpoint:
a shuffling sampler without a generator of its own (``shuffle=True``) draws every epoch's order from torch's
default generator, so the epochs after the resumed one are only shuffled as in an uninterrupted run if that
generator continues from where it was. The next iteration then re-creates the interrupted epoch: the generators
are set to their epoch-start state while its iterator is created and the consumed batches are skipped, and put
back afterwards, so the batches that follow, the random numbers the training loop draws and the order of the
next epochs are those of an uninterrupted run. Skipping is free for the distributed samplers fabric injects (they
leave out the consumed indices); for other samplers the consumed batches are drawn again and discarded.

In a multi-process run the checkpoint holds the generator states of the process that wrote it; processes seeded
alike (``Fabric.seed_everything``) share them. A run that gives each process its own random stream restores it
itself, after loading the dataloader's state.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader

from fabric_utils import capture_rng_state, move_data_to_device, restore_rng_state

_STATE_KEYS = ("epoch", "batches_consumed", "in_progress", "sampler_seed", "epoch_rng")
_RNG_KEY = "rng"  # optional: states written before it existed resume without it


class FabricDataLoader:
    """Iterates the wrapped DataLoader, moving each batch to ``device`` (unless None) and calling ``set_epoch``.

    Attribute reads pass through to the DataLoader. The wrapper is stateful: save it in a checkpoint and loading
    it resumes mid-epoch at the next batch, in the same order.
    """

    def __init__(self, dataloader: DataLoader, device: torch.device | None = None) -> None:  # type: ignore[type-arg]
        self._dataloader = dataloader
        self._device = device if device is not None and device.type != "cpu" else None
        self._target_device = device
        self._samplers = _epoch_aware_samplers(dataloader)
        self._epoch = 0
        self._consumed = 0
        self._in_progress = False
        self._epoch_rng: dict[str, Any] | None = None
        self._resume: int | None = None

    @property
    def device(self) -> torch.device | None:
        """Where batches are moved to (None: left where the DataLoader puts them)."""
        return self._target_device

    @property
    def dataloader(self) -> DataLoader:  # type: ignore[type-arg]
        """The DataLoader being wrapped (with the distributed sampler, if one was injected)."""
        return self._dataloader

    def __len__(self) -> int:
        return len(self._dataloader)

    def __getattr__(self, name: str) -> Any:
        try:
            dataloader = self.__dict__["_dataloader"]
        except KeyError:
            raise AttributeError(name) from None
        return getattr(dataloader, name)

    # -- iteration ------------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        if self._resume is None and self._in_progress:
            self._epoch += 1  # the previous epoch was left early
        for sampler in self._samplers:
            sampler.set_epoch(self._epoch)
        if self._resume is not None:
            iterator = self._resumed_iterator(self._resume)
            self._resume = None
        else:
            self._consumed = 0
            self._epoch_rng = self._generator_states()
            iterator = iter(self._dataloader)
        self._in_progress = True
        return self._batches(iterator)

    def _batches(self, iterator: Iterator[Any]) -> Iterator[Any]:
        device = self._device
        if device is None:
            for batch in iterator:
                self._consumed += 1
                yield batch
        else:
            for batch in iterator:
                self._consumed += 1
                yield move_data_to_device(batch, device)
        self._epoch += 1
        self._consumed = 0
        self._in_progress = False
        self._epoch_rng = None

    def _resumed_iterator(self, consumed: int) -> Iterator[Any]:
        """The iterator of the interrupted epoch, positioned after its first ``consumed`` batches.

        Re-creating it leaves every random generator as it was before (a dataset may draw while batches are skipped).
        """
        own_state = capture_rng_state()
        own_generators = self._generator_states()
        try:
            if self._epoch_rng is not None:
                self._set_generator_states(self._epoch_rng)
            skip_in_sampler = _skippable_sampler(self._dataloader)
            if skip_in_sampler is not None and consumed:
                skip_in_sampler.skip_next(consumed * (self._dataloader.batch_size or 1))
                iterator = iter(self._dataloader)
            else:
                iterator = iter(self._dataloader)
                for _ in range(consumed):
                    if next(iterator, _END) is _END:
                        break
        finally:
            restore_rng_state(own_state)
            self._set_generator_states(own_generators)
        self._consumed = consumed
        return iterator

    # -- random state ---------------------------------------------------------------------------------------------
    def _generators(self) -> list[torch.Generator]:
        found: list[torch.Generator] = []
        loader = self._dataloader
        batch_sampler = getattr(loader, "batch_sampler", None)
        candidates = [
            getattr(loader, "generator", None),
            getattr(getattr(loader, "sampler", None), "generator", None),
            getattr(getattr(batch_sampler, "sampler", None), "generator", None),
        ]
        for generator in candidates:
            if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
                found.append(generator)
        return found

    def _generator_states(self) -> dict[str, Any]:
        return {"torch": torch.get_rng_state(), "generators": [g.get_state() for g in self._generators()]}

    def _set_generator_states(self, states: dict[str, Any]) -> None:
        torch.set_rng_state(states["torch"])
        generators = self._generators()
        if len(generators) == len(states["generators"]):
            for generator, state in zip(generators, states["generators"]):
                generator.set_state(state)

    # -- checkpointing --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where iteration stands: epoch, batches consumed in it, the sampler seed, and the state of the random
        generators the loader draws from, now (``rng``) and at the start of an epoch in progress (``epoch_rng``)."""
        seeds = [getattr(s, "seed", None) for s in self._samplers]
        return {
            "epoch": self._epoch,
            "batches_consumed": self._consumed if self._in_progress else 0,
            "in_progress": self._in_progress,
            "sampler_seed": next((s for s in seeds if isinstance(s, int)), None),
            "epoch_rng": self._epoch_rng if self._in_progress else None,
            _RNG_KEY: self._generator_states(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the next iteration continues the saved epoch at its next batch.

        Torch's default generator and the loader's own generators are put back to their state at the checkpoint
        now, so that later epochs are shuffled as in an uninterrupted run.
        """
        missing = [key for key in _STATE_KEYS if key not in state_dict]
        if missing:
            raise ValueError(f"Not a FabricDataLoader state: missing {missing}. Expected the keys {list(_STATE_KEYS)}.")
        epoch, consumed = state_dict["epoch"], state_dict["batches_consumed"]
        for name, value in (("epoch", epoch), ("batches_consumed", consumed)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Invalid dataloader state: {name}={value!r} must be an int >= 0")
        rng = state_dict.get(_RNG_KEY)
        for name in ("epoch_rng", _RNG_KEY):
            _check_generator_states(name, state_dict.get(name))
        self._epoch = epoch
        if rng is not None:
            self._set_generator_states(rng)
        seed = state_dict["sampler_seed"]
        if seed is not None:
            for sampler in self._samplers:
                if hasattr(sampler, "seed"):
                    sampler.seed = seed
        if state_dict["in_progress"]:
            self._epoch_rng = state_dict["epoch_rng"]
            self._resume = consumed
        else:
            self._epoch_rng = None
            self._resume = None
        self._consumed = consumed if state_dict["in_progress"] else 0
        self._in_progress = False


_END = object()


def _check_generator_states(name: str, states: Any) -> None:
    """``states`` is None or what ``FabricDataLoader._generator_states`` returns; raise ValueError otherwise."""
    if states is None:
        return
    valid = (
        isinstance(states, dict)
        and isinstance(states.get("torch"), torch.Tensor)
        and states["torch"].dtype == torch.uint8
        and isinstance(states.get("generators"), (list, tuple))
        and all(isinstance(g, torch.Tensor) and g.dtype == torch.uint8 for g in states["generators"])
    )
    if not valid:
        raise ValueError(
            f"Invalid dataloader state: {name}={reprlib.repr(states)} must be None or a dict with 'torch' (a uint8"
            " tensor, the state of torch's default generator) and 'generators' (a list of uint8 generator states)"
        )


def _epoch_aware_samplers(loader: Any) -> list[Any]:
    """The loader's samplers that have ``set_epoch`` (e.g. DistributedSampler), without duplicates."""
    found: list[Any] = []
    batch_sampler = getattr(loader, "batch_sampler", None)
    for sampler in (getattr(loader, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None)):
        if (
            sampler is not None
            and callable(getattr(sampler, "set_epoch", None))
            and all(sampler is not s for s in found)
        ):
            found.append(sampler)
    return found


def _skippable_sampler(loader: Any) -> Any:
    """The sampler that can leave out already-consumed indices itself, when batches are formed plainly from it."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    if batch_sampler is not None and type(batch_sampler) is not BatchSampler:
        return None
    sampler = getattr(loader, "sampler", None)
    return sampler if callable(getattr(sampler, "skip_next", None)) else None
