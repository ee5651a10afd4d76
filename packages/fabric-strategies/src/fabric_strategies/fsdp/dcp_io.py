"""Whole-checkpoint reads of ``torch.distributed.checkpoint`` (DCP) directories: their saved structure, their full
contents in one process, and consolidation into one file.

The reading itself is ``fabric_io.load_sharded_checkpoint`` / ``fabric_io.read_sharded_metadata``: restricted by
default (``weights_only=True``: metadata and non-tensor entries go through restricted unpicklers; anything else raises
``UnsafeCheckpointError``), and every file the checkpoint names must lie inside its directory.

Saving goes through ``fabric_io.save_sharded_checkpoint`` (a hidden staging directory renamed into place once DCP
wrote its metadata), so a directory at the target path is always a complete checkpoint.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from fabric_io import atomic_save, load_sharded_checkpoint, read_sharded_metadata

if TYPE_CHECKING:
    from torch.distributed.checkpoint.metadata import Metadata

    from fabric_utils import PathLike


def saved_paths(metadata: Metadata) -> dict[str, tuple[Any, ...]]:
    """Each saved (flattened) key and its path in the nested state that was saved, e.g. ``("model", "l1.weight")``."""
    planner_data = metadata.planner_data or {}
    return {key: tuple(planner_data.get(key, (key,))) for key in metadata.state_dict_metadata}


def top_level_keys(metadata: Metadata) -> list[str]:
    """The keys of the dict that was saved (``"model"``, ``"optimizer"``, ``"step"``, ...), in saved order."""
    return list(dict.fromkeys(str(path[0]) for path in saved_paths(metadata).values()))


def metadata_template(metadata: Metadata, keys: Iterable[str] | None = None) -> dict[str, Any]:
    """A nested state with the saved structure: empty tensors of the saved shapes and dtypes, ``None`` for other data.

    Loading into it (``fabric_io.load_sharded_checkpoint``) fills it with the full, unsharded contents. ``keys``
    limits it to some top-level keys.
    """
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    wanted = None if keys is None else set(keys)
    template: dict[str, Any] = {}
    for key, path in saved_paths(metadata).items():
        if wanted is not None and str(path[0]) not in wanted:
            continue
        item = metadata.state_dict_metadata[key]
        if isinstance(item, TensorStorageMetadata):
            value: Any = torch.empty(item.size, dtype=item.properties.dtype)
        else:
            value = None
        set_nested(template, path, value)
    return template


def set_nested(root: dict[Any, Any], path: tuple[Any, ...], value: Any) -> None:
    """``root[path[0]][path[1]]...[path[-1]] = value``, creating dicts (lists where a key is an int) on the way."""
    node: Any = root
    for key, following in itertools.pairwise(path):
        node = _child(node, key, [] if isinstance(following, int) else {})
    _assign(node, path[-1], value)


def _child(node: Any, key: Any, empty: Any) -> Any:
    if isinstance(node, list):
        _grow(node, key)
        if node[key] is None:
            node[key] = empty
        return node[key]
    return node.setdefault(key, empty)


def _assign(node: Any, key: Any, value: Any) -> None:
    if isinstance(node, list):
        _grow(node, key)
    node[key] = value


def _grow(items: list[Any], index: int) -> None:
    items.extend([None] * (index + 1 - len(items)))


def read_sharded_checkpoint(
    path: PathLike, keys: Iterable[str] | None = None, *, weights_only: bool = True, metadata: Metadata | None = None
) -> dict[str, Any]:
    """The full (unsharded) contents of the sharded checkpoint at ``path``, read by this process alone.

    ``keys`` limits it to some top-level keys. Every process that calls it holds the whole result in CPU memory.
    """
    metadata = read_sharded_metadata(path, weights_only=weights_only) if metadata is None else metadata
    template = metadata_template(metadata, keys)
    if not template:
        return {}
    return load_sharded_checkpoint(template, path, weights_only=weights_only, collective=False)


def consolidate_sharded_checkpoint(
    src_dir: PathLike, out_file: PathLike | None = None, *, weights_only: bool = True
) -> str:
    """Turn the sharded checkpoint directory ``src_dir`` into one ``torch.save`` file; return the file's path.

    The file (default: ``<src_dir>.consolidated``) holds the same nested dict that was saved, with full tensors:
    ``{"model": {name: tensor}, "optimizer": {"state": {name: {...}}, "param_groups": [...]}, ...}``; optimizer
    state is keyed by parameter name, as ``torch.distributed.checkpoint.state_dict`` writes it. It is written
    atomically and reads back with ``torch.load(path, weights_only=True)``. Runs in one process, no process group
    needed; it holds the whole checkpoint in CPU memory.

    A DeepSpeed checkpoint directory (ZeRO stage 1-3, DeepSpeed installed) gives the full fp32 weights under the
    model's key and the plain entries saved with them; its optimizer state, partitioned in DeepSpeed's own layout,
    is left out.
    """
    source = os.fspath(src_dir).rstrip("/\\")
    output = os.fspath(out_file) if out_file is not None else f"{source}.consolidated"
    if os.path.abspath(output) == os.path.abspath(source):
        raise ValueError(f"The output file {output!r} would replace the checkpoint it is made from; choose another.")
    if os.path.isdir(output):
        raise ValueError(f"The output file {output!r} is an existing directory; choose a file path.")
    from fabric_strategies.deepspeed.consolidate import is_deepspeed_checkpoint, read_deepspeed_checkpoint

    if is_deepspeed_checkpoint(source):
        state = read_deepspeed_checkpoint(source, weights_only=weights_only)
    else:
        state = read_sharded_checkpoint(source, weights_only=weights_only)
    atomic_save(state, output)
    return output
