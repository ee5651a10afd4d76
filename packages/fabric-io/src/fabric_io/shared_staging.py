"""CPU copies of a state in shared memory, which a writer process (``fabric_io.writer``) reads without copying.

``SharedStaging.copy`` does what ``CpuStaging.copy`` does -- a copy of the state that later changes of the state do
not reach -- but puts every tensor's memory into one anonymous shared file (``memfd``, Linux), laid out storage by
storage. ``dump_call`` then pickles a call on the copy with each such tensor written as its place in that file, so a
100 MB state crosses to the writer as a few hundred bytes and one file descriptor, and ``load_call`` (in the writer)
rebuilds the same tensors over the same memory. What is not a plain strided tensor is copied and pickled by value.

Each distinct storage is copied whole and once, so tensors that share memory (tied weights, views) still share it
and ``torch.save`` writes the same storages as it would from the original. A DTensor is copied as its local shard
plus its layout, and the writer rebuilds it on a device mesh of its own process group (same ranks, same shape).
The memory is kept for the next copy, which lays the same storages out the same way: a copy is valid until the next
``copy`` of the same object.
"""

from __future__ import annotations

import copy as copy_module
import io
import itertools
import mmap
import os
import pickle
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import torch

from fabric_io.background import UNCOPYABLE, uncopyable_error

ALIGNMENT = 64
"""Byte alignment of each storage in the shared file (as in ``torch.save``'s archives)."""

_ARENA_NUMBERS = itertools.count(1)


def shared_staging_available() -> bool:
    """Whether this platform has anonymous shared files (``os.memfd_create``: Linux)."""
    return hasattr(os, "memfd_create")


class Arena:
    """One anonymous shared file of ``size`` bytes, mapped into this process; ``fd`` passes it to another."""

    def __init__(self, size: int, *, fd: int | None = None, number: int | None = None) -> None:
        self.size = size
        self.number = next(_ARENA_NUMBERS) if number is None else number
        if fd is None:
            fd = os.memfd_create(f"fabric-checkpoint-{self.number}", os.MFD_CLOEXEC)
            os.ftruncate(fd, max(size, 1))
        self.fd = fd
        self.memory = mmap.mmap(fd, max(size, 1))

    def storage(self, offset: int, nbytes: int) -> torch.UntypedStorage:
        """The memory ``[offset, offset + nbytes)`` of the file as a storage of its own (what ``torch.save`` writes)."""
        return torch.frombuffer(self.memory, dtype=torch.uint8, count=nbytes, offset=offset).untyped_storage()

    def close(self) -> None:
        """Close the descriptor; the mapping goes once no tensor uses it."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class StagedDTensor:
    """A DTensor's copy: its local shard in shared memory and what rebuilds it (mesh ranks, placements, shape)."""

    def __init__(self, local: torch.Tensor, source: Any) -> None:
        mesh = source.device_mesh
        self.local = local
        self.layout = (mesh.mesh.tolist(), mesh.mesh_dim_names, tuple(source.placements), source.shape, source.stride())

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return rebuild_dtensor, (self.local, *self.layout)


_MESHES: dict[tuple[Any, ...], Any] = {}


def rebuild_dtensor(local: torch.Tensor, ranks: Any, names: Any, placements: Any, shape: Any, stride: Any) -> Any:
    """In the writer: the DTensor over ``local`` on a CPU mesh of the same ranks in the writer's process group."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor

    key = (repr(ranks), names)
    mesh = _MESHES.get(key)
    if mesh is None:
        mesh = _MESHES[key] = DeviceMesh("cpu", torch.tensor(ranks), mesh_dim_names=names)
    return DTensor.from_local(local, mesh, placements, run_check=False, shape=shape, stride=stride)


def forget_meshes() -> None:
    """Drop the writer's meshes (its process group is being replaced)."""
    _MESHES.clear()


def _in_arena(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s memory can be laid out in a shared file: a plain strided tensor with memory."""
    return (
        type(tensor) in (torch.Tensor, torch.nn.Parameter)
        and tensor.layout is torch.strided
        and not tensor.is_meta
        and not tensor.is_quantized
        and tensor.untyped_storage().nbytes() > 0
    )


class SharedStaging:
    """Copies states into shared memory that it keeps for the next copy (see the module docstring)."""

    def __init__(self) -> None:
        self.arena: Arena | None = None
        self._layout: list[tuple[int, int]] = []  # (source storage address, bytes), in arena order
        self._regions: dict[int, tuple[int, torch.UntypedStorage]] = {}  # source address -> (offset, copy)

    def copy(self, state: Any) -> Any:
        """A copy of ``state`` in the shared file; raises ``TypeError`` naming an object that cannot be copied."""
        try:
            return self._copy(state)
        except UNCOPYABLE as err:
            raise uncopyable_error(err) from err

    def _copy(self, state: Any) -> Any:
        sources: dict[int, torch.UntypedStorage] = {}
        for tensor in _tensors(state):
            storage = tensor.untyped_storage()
            sources.setdefault(storage.data_ptr(), storage)
        layout = [(address, storage.nbytes()) for address, storage in sources.items()]
        if layout != self._layout:
            self._lay_out(layout)
        for address, source in sources.items():
            target = self._regions[address][1]
            _bytes_of(target).copy_(_bytes_of(source))
        return _rebuild(state, self._regions)

    def regions(self) -> dict[int, tuple[int, int]]:
        """Address of each copy's storage -> (its offset in ``arena``, bytes); for ``dump_call``."""
        return {copy.data_ptr(): (offset, copy.nbytes()) for offset, copy in self._regions.values()}

    def close(self) -> None:
        self._regions, self._layout = {}, []
        if self.arena is not None:
            self.arena.close()
            self.arena = None

    def _lay_out(self, layout: list[tuple[int, int]]) -> None:
        offsets, end = [], 0
        for _, nbytes in layout:
            offsets.append(end)
            end += -(-nbytes // ALIGNMENT) * ALIGNMENT
        if self.arena is None or self.arena.size < end:
            self.close()
            self.arena = Arena(end)
        arena = self.arena
        self._regions = {
            address: (offset, arena.storage(offset, nbytes)) for (address, nbytes), offset in zip(layout, offsets)
        }
        self._layout = layout


def _bytes_of(storage: torch.UntypedStorage) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)


def _tensors(state: Any) -> Iterable[torch.Tensor]:
    """The tensors of ``state`` (DTensors: their local shards) to lay out, found in dicts, lists and tuples."""
    if isinstance(state, dict):
        for value in state.values():
            yield from _tensors(value)
    elif type(state) in (list, tuple):
        for value in state:
            yield from _tensors(value)
    elif isinstance(state, torch.Tensor):
        local = state.to_local() if _is_dtensor(state) else state
        if _in_arena(local):
            yield local


def _is_dtensor(tensor: torch.Tensor) -> bool:
    if "torch.distributed.tensor" not in sys.modules:  # no DTensor can exist before its module is imported
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def _rebuild(state: Any, regions: dict[int, tuple[int, torch.UntypedStorage]]) -> Any:
    kind = type(state)
    if kind is dict or kind is OrderedDict:
        copied = kind((key, _rebuild(value, regions)) for key, value in state.items())
        if kind is OrderedDict and state.__dict__:  # a state_dict's `_metadata`
            copied.__dict__.update(copy_module.deepcopy(state.__dict__))
        return copied
    if kind is list or kind is tuple:
        return kind(_rebuild(value, regions) for value in state)
    if isinstance(state, torch.Tensor):
        if _is_dtensor(state):
            return StagedDTensor(_rebuild(state.to_local(), regions), state)
        if _in_arena(state):
            return _tensor_over(regions[state.untyped_storage().data_ptr()][1], *_layout_of(state))
        return state.detach().to("cpu", copy=True)
    return copy_module.deepcopy(state)


def _layout_of(tensor: torch.Tensor) -> tuple[Any, ...]:
    """What ``_tensor_over`` needs, besides the storage, to rebuild ``tensor``."""
    parameter = type(tensor) is torch.nn.Parameter
    return tensor.dtype, tensor.storage_offset(), tuple(tensor.size()), tensor.stride(), tensor.requires_grad, parameter


def _tensor_over(
    storage: torch.UntypedStorage, dtype: torch.dtype, offset: int, size: Any, stride: Any, grad: bool, parameter: bool
) -> torch.Tensor:
    """The tensor ``_layout_of`` described, over ``storage`` (a Parameter stays a Parameter)."""
    tensor = torch.empty(0, dtype=dtype).set_(storage, offset, size, stride)
    if parameter:
        return torch.nn.Parameter(tensor, requires_grad=grad)
    return tensor.requires_grad_(grad) if grad else tensor


# -- crossing to the writer ----------------------------------------------------------------------------------------
class _CallPickler(pickle.Pickler):
    """Pickles tensors whose memory lies in a known arena as their place there; everything else by value."""

    def __init__(self, file: io.BytesIO, regions: dict[int, tuple[int, int, int]]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._regions = regions
        self.arenas: set[int] = set()

    def persistent_id(self, obj: Any) -> Any:
        if type(obj) not in (torch.Tensor, torch.nn.Parameter) or obj.layout is not torch.strided or obj.is_meta:
            return None
        storage = obj.untyped_storage()
        region = self._regions.get(storage.data_ptr())
        if region is None or region[2] != storage.nbytes():
            return None
        self.arenas.add(region[0])
        return ("arena", *region, *_layout_of(obj))


def dump_call(call: Any, stagings: Iterable[SharedStaging]) -> tuple[bytes, list[Arena]]:
    """``call`` pickled for ``load_call``, and the arenas its tensors live in."""
    regions: dict[int, tuple[int, int, int]] = {}
    arenas: dict[int, Arena] = {}
    for staging in stagings:
        if staging.arena is not None:
            arenas[staging.arena.number] = staging.arena
            for address, (offset, nbytes) in staging.regions().items():
                regions[address] = (staging.arena.number, offset, nbytes)
    buffer = io.BytesIO()
    pickler = _CallPickler(buffer, regions)
    pickler.dump(call)
    return buffer.getvalue(), [arenas[number] for number in sorted(pickler.arenas)]


class _CallUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, arenas: dict[int, Arena]) -> None:
        super().__init__(file)
        self._arenas = arenas
        self._storages: dict[tuple[int, int], torch.UntypedStorage] = {}  # one object per storage: ties stay tied

    def persistent_load(self, pid: Any) -> Any:
        _, number, offset, nbytes, *layout = pid
        storage = self._storages.get((number, offset))
        if storage is None:
            storage = self._storages[number, offset] = self._arenas[number].storage(offset, nbytes)
        return _tensor_over(storage, *layout)


def load_call(payload: bytes, arenas: dict[int, Arena]) -> Any:
    """The call that ``dump_call`` pickled, its tensors over the shared memory of ``arenas`` (by number)."""
    return _CallUnpickler(io.BytesIO(payload), arenas).load()
