"""Checkpoints of ``XLAFSDPStrategy``: a directory of per-process shards, or one consolidated file of model weights."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Protocol

from torch.nn import Module
from torch.optim import Optimizer

from fabric_io import exists, get_filesystem, is_remote_path, join_path, remove_path, resolve_inside
from fabric_strategies.checkpoint import (
    CheckpointingStrategy,
    LoadTarget,
    StateFilter,
    check_filter,
    restore_state,
    to_checkpoint,
)
from fabric_strategies.xla import runtime
from fabric_utils import PathLike


class XLAShards(CheckpointingStrategy, Protocol):
    """What these checkpoints need of ``XLAFSDPStrategy``: its ranks, barrier, save settings and wrappers."""

    @property
    def state_dict_type(self) -> str: ...

    @property
    def sequential_save(self) -> bool: ...

    @property
    def global_rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    @property
    def is_global_zero(self) -> bool: ...

    def barrier(self, name: str | None = None) -> None: ...

    def wrapper_of(self, module: Module) -> Module | None: ...


#: the entry of each shard file that holds ``XlaFullyShardedDataParallel.get_shard_metadata()``
SHARD_METADATA = "shard_metadata"
_SHARD_PATTERN = re.compile(r"checkpoint_rank-(\d+)-of-(\d+)\.pth$")


def shard_file_name(rank: int, world_size: int) -> str:
    """The file of ``rank``'s shard (the naming torch_xla's ``consolidate_sharded_model_checkpoints`` globs)."""
    return f"checkpoint_rank-{rank:08d}-of-{world_size:08d}.pth"


def _model_entry(strategy: XLAShards, state: Mapping[str, Any], action: str) -> tuple[str, Module]:
    """The key and wrapper of the one model in ``state`` that the strategy set up."""
    if not isinstance(state, Mapping):
        raise TypeError(f"`state` must be a dict of names to objects, got {type(state).__name__}")
    found = [(key, wrapper) for key, obj in state.items() if (wrapper := strategy.wrapper_of(obj)) is not None]
    if not found:
        raise ValueError(
            f"XLAFSDPStrategy cannot {action} a checkpoint without a model it set up: the state holds"
            f" {sorted(map(str, state))}. Pass the model returned by setup_module, e.g. {{'model': model, ...}}."
        )
    if len(found) > 1:
        raise ValueError(
            f"XLAFSDPStrategy checkpoints hold one sharded model, but the state has several: {[k for k, _ in found]}."
        )
    return found[0]


def _optimizer_keys(state: Mapping[str, Any]) -> list[str]:
    return sorted(key for key, obj in state.items() if isinstance(obj, Optimizer))


def save_xla_fsdp_checkpoint(
    strategy: XLAShards,
    path: PathLike,
    state: Mapping[str, Any],
    filter: StateFilter | None,
    storage_options: Any | None,
) -> None:
    model_key, wrapper = _model_entry(strategy, state, "save")
    check_filter(state, filter)
    if strategy.state_dict_type == "sharded":
        checkpoint = to_checkpoint(strategy, state, filter)
        checkpoint[SHARD_METADATA] = wrapper.get_shard_metadata()  # type: ignore[operator]
        target = join_path(path, shard_file_name(strategy.global_rank, strategy.world_size))
        _write_shards(strategy, checkpoint, target, storage_options)
        return
    optimizers = _optimizer_keys(state)
    if optimizers:
        raise ValueError(
            f"state_dict_type='full' saves the model weights only, but the state holds optimizers {optimizers}. Leave"
            " them out, or use XLAFSDPStrategy(state_dict_type='sharded') to checkpoint them too."
        )
    _save_full(strategy, path, state, model_key, wrapper, filter, storage_options)


def _write_shards(strategy: XLAShards, checkpoint: dict[str, Any], target: str, storage_options: Any) -> None:
    """Every process writes its file; with ``sequential_save`` one process after the other."""
    if not strategy.sequential_save:
        strategy.checkpoint_io.save_checkpoint(checkpoint, target, storage_options=storage_options)
        strategy.barrier("xla_fsdp_save")
        return
    for rank in range(strategy.world_size):
        if rank == strategy.global_rank:
            strategy.checkpoint_io.save_checkpoint(checkpoint, target, storage_options=storage_options)
        strategy.barrier(f"xla_fsdp_save_{rank}")


def _save_full(
    strategy: XLAShards,
    path: PathLike,
    state: Mapping[str, Any],
    model_key: str,
    wrapper: Module,
    filter: StateFilter | None,
    storage_options: Any | None,
) -> None:
    """Shards go to a scratch directory next to ``path``; rank 0 consolidates them into the file ``path``."""
    scratch = f"{os.fspath(path)}.fabric-shards"
    rank, world_size = strategy.global_rank, strategy.world_size
    shard = {"model": wrapper.state_dict(), SHARD_METADATA: wrapper.get_shard_metadata()}  # type: ignore[operator]
    strategy.checkpoint_io.save_checkpoint(shard, join_path(scratch, shard_file_name(rank, world_size)))
    strategy.barrier("xla_fsdp_full_shards")
    if strategy.is_global_zero:
        shards = [
            strategy.checkpoint_io.load_checkpoint(
                join_path(scratch, shard_file_name(r, world_size)), map_location="cpu"
            )
            for r in range(world_size)
        ]
        fsdp = runtime.xla_module("distributed.fsdp")
        full = fsdp.consolidate_sharded_state_dicts([s["model"] for s in shards], shards[0][SHARD_METADATA])
        others = {key: obj for key, obj in state.items() if key != model_key}
        checkpoint = to_checkpoint(strategy, others, {k: v for k, v in (filter or {}).items() if k != model_key})
        keep = (filter or {}).get(model_key)
        checkpoint[model_key] = {name: t for name, t in full.items() if keep is None or keep(name, t)}
        strategy.checkpoint_io.save_checkpoint(checkpoint, path, storage_options=storage_options)
        remove_path(scratch)
    strategy.barrier("xla_fsdp_full_saved")


def load_shard(
    strategy: XLAShards, path: PathLike, state: Any, strict: bool, weights_only: bool | None
) -> dict[str, Any]:
    """Restore this process's shard file of the checkpoint directory ``path`` into ``state``."""
    if not isinstance(state, dict) or not state:
        raise ValueError(
            f"{os.fspath(path)!r} is a sharded checkpoint: pass the state to restore, e.g. {{'model': model,"
            " 'optimizer': optimizer}}, with the model set up by XLAFSDPStrategy."
        )
    _model_entry(strategy, state, "load")
    rank, world_size = strategy.global_rank, strategy.world_size
    target = join_path(path, shard_file_name(rank, world_size))
    if not exists(target):
        saved = sorted(
            {
                int(m.group(2))
                for name in get_filesystem(path).ls(os.fspath(path), detail=False)
                if (m := _SHARD_PATTERN.search(name))
            }
        )
        if saved:
            raise ValueError(
                f"The sharded checkpoint {os.fspath(path)!r} was saved by {saved[0]} processes; this run has"
                f" {world_size}. XLA FSDP shards load at the world size they were saved with."
            )
        raise FileNotFoundError(
            f"{os.fspath(path)!r} holds no XLA FSDP shard files (expected {shard_file_name(rank, world_size)!r})."
        )
    if not is_remote_path(path):  # a shard that is a symbolic link out of the checkpoint is refused
        resolve_inside(path, shard_file_name(rank, world_size), what="shard file")
    checkpoint = strategy.checkpoint_io.load_checkpoint(target, map_location="cpu", weights_only=weights_only)
    checkpoint.pop(SHARD_METADATA, None)
    return restore_state(strategy, state, checkpoint, strict, path=target)


def check_full_load(strategy: XLAShards, state: LoadTarget) -> None:
    """A full checkpoint holds whole weights: they load into models that are not sharded yet, without optimizers."""
    if isinstance(state, Optimizer):
        raise ValueError(
            "XLAFSDPStrategy keeps optimizer states in shards: load them with load(path, {'optimizer': optimizer,"
            " ...}) from a sharded checkpoint directory instead of load_raw."
        )
    objects = [state] if isinstance(state, Module) else list((state or {}).values())
    if any(isinstance(obj, Module) and strategy.wrapper_of(obj) is not None for obj in objects):
        raise ValueError(
            "A full checkpoint loads into the model before it is set up (the set-up model is sharded): load it first,"
            " then call setup_module. To resume a sharded model, save with state_dict_type='sharded'."
        )
    optimizers = [key for key, obj in (state.items() if isinstance(state, dict) else ()) if isinstance(obj, Optimizer)]
    if optimizers:
        raise ValueError(f"A full checkpoint holds no optimizer state, but the state asks for {sorted(optimizers)}.")
