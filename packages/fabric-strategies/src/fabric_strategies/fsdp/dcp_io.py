"""Reading ``torch.distributed.checkpoint`` (DCP) directories without running code from them.

DCP reads a directory's ``.metadata`` with plain ``pickle`` and its non-tensor entries with
``torch.load(weights_only=False)``: a crafted checkpoint could run code. With ``weights_only=True`` (the default
everywhere here) the metadata goes through an unpickler that only builds DCP's own metadata records, and non-tensor
entries are read with ``torch.load(weights_only=True)``; anything else raises ``UnsafeCheckpointError``.

Saving goes through ``fabric_io.save_sharded_checkpoint`` (a hidden staging directory renamed into place once DCP
wrote its metadata), so a directory at the target path is always a complete checkpoint.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import itertools
import os
import pickle
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from fabric_io import METADATA_FILE, atomic_save, check_sharded_checkpoint
from fabric_utils import PathLike

if TYPE_CHECKING:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import Metadata

#: the globals a DCP metadata file may name besides DCP's own dataclasses and enums
_ALLOWED_GLOBALS = frozenset(
    {
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("torch.serialization", "_MEM_FORMAT_ENCODING"),
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("pathlib", "Path"),
        ("pathlib", "PosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PurePosixPath"),
        ("pathlib", "PureWindowsPath"),
    }
)
_DCP_PACKAGE = "torch.distributed.checkpoint."


class UnsafeCheckpointError(ValueError):
    """A sharded checkpoint holds something other than tensors, DCP metadata and plain data (e.g. a pickled class)."""


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP metadata records (dataclasses and enums of ``torch.distributed.checkpoint``) and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith(_DCP_PACKAGE):
            found = super().find_class(module, name)
            if isinstance(found, type) and (dataclasses.is_dataclass(found) or issubclass(found, enum.Enum)):
                return found
        raise UnsafeCheckpointError(
            f"The checkpoint metadata names {module}.{name}, which is not a checkpoint metadata type; refusing to "
            "unpickle it (it could run code). Pass weights_only=False only if you trust where the checkpoint came from."
        )


def read_metadata(path: PathLike, *, weights_only: bool = True) -> Metadata:
    """The DCP ``Metadata`` of the complete sharded checkpoint at ``path`` (errors name the path otherwise)."""
    directory = check_sharded_checkpoint(path)
    from torch.distributed.checkpoint.metadata import Metadata

    with open(os.path.join(directory, METADATA_FILE), "rb") as file:
        try:
            metadata = _MetadataUnpickler(file).load() if weights_only else pickle.load(file)
        except UnsafeCheckpointError:
            raise
        except Exception as err:
            raise ValueError(f"The metadata of the sharded checkpoint {os.fspath(path)!r} is corrupt: {err}") from err
    if not isinstance(metadata, Metadata):
        raise ValueError(f"{os.fspath(path)!r}: {METADATA_FILE} holds {type(metadata).__name__}, not DCP metadata")
    return metadata


def saved_paths(metadata: Metadata) -> dict[str, tuple[Any, ...]]:
    """Each saved (flattened) key and its path in the nested state that was saved, e.g. ``("model", "l1.weight")``."""
    planner_data = metadata.planner_data or {}
    return {key: tuple(planner_data.get(key, (key,))) for key in metadata.state_dict_metadata}


def top_level_keys(metadata: Metadata) -> list[str]:
    """The keys of the dict that was saved (``"model"``, ``"optimizer"``, ``"step"``, ...), in saved order."""
    return list(dict.fromkeys(str(path[0]) for path in saved_paths(metadata).values()))


def metadata_template(metadata: Metadata, keys: Iterable[str] | None = None) -> dict[str, Any]:
    """A nested state with the saved structure: empty tensors of the saved shapes and dtypes, ``None`` for other data.

    Loading into it (``load_into``) fills it with the full, unsharded contents. ``keys`` limits it to some top-level
    keys.
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


def _reader(directory: str, weights_only: bool) -> FileSystemReader:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    if not weights_only:
        return FileSystemReader(directory)

    class _SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
            metadata = read_metadata(directory, weights_only=True)
            storage_meta = getattr(metadata, "storage_meta", None) or StorageMeta()
            storage_meta.load_id = getattr(self, "load_id", None)
            metadata.storage_meta = storage_meta
            return metadata

    return _SafeReader(directory)


def _planner(strict: bool, weights_only: bool) -> Any:
    from torch.distributed.checkpoint import DefaultLoadPlanner

    if not weights_only:
        return DefaultLoadPlanner(allow_partial_load=not strict)

    class _WeightsOnlyPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            fqn = read_item.dest_index.fqn
            try:
                loaded = torch.load(value, weights_only=True)
            except pickle.UnpicklingError as err:
                raise UnsafeCheckpointError(
                    f"The checkpoint entry {fqn!r} is not plain data, so weights_only=True refuses it"
                    f" ({_refusal(err)}). Pass weights_only=False only if you trust where the checkpoint came from."
                ) from None
            if self.flatten_state_dict:
                set_nested(self.original_state_dict, tuple(self.mappings[fqn]), loaded)
            else:
                self.state_dict[fqn] = loaded

    return _WeightsOnlyPlanner(allow_partial_load=not strict)


def load_into(
    state_dict: dict[str, Any],
    path: PathLike,
    *,
    strict: bool = True,
    weights_only: bool = True,
    collective: bool = True,
) -> dict[str, Any]:
    """Load the checkpoint at ``path`` into ``state_dict`` in place (resharding tensors and DTensors); return it.

    ``collective=True`` (with a process group) means every rank calls this with its own shards; ``False`` reads in
    this process alone (full tensors). ``strict=False`` leaves keys the checkpoint lacks as they are.
    """
    directory = check_sharded_checkpoint(path)
    import torch.distributed.checkpoint as dcp

    distributed = collective and dist.is_available() and dist.is_initialized()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        try:
            dcp.load(
                state_dict,
                storage_reader=_reader(directory, weights_only),
                planner=_planner(strict, weights_only),
                no_dist=not distributed,
            )
        except dcp.CheckpointException as err:
            raise _plain_error(path, err) from err
    return state_dict


def read_sharded_checkpoint(
    path: PathLike, keys: Iterable[str] | None = None, *, weights_only: bool = True, metadata: Metadata | None = None
) -> dict[str, Any]:
    """The full (unsharded) contents of the sharded checkpoint at ``path``, read by this process alone.

    ``keys`` limits it to some top-level keys. Every process that calls it holds the whole result in CPU memory.
    """
    metadata = read_metadata(path, weights_only=weights_only) if metadata is None else metadata
    template = metadata_template(metadata, keys)
    if not template:
        return {}
    return load_into(template, path, strict=True, weights_only=weights_only, collective=False)


def consolidate_sharded_checkpoint(
    src_dir: PathLike, out_file: PathLike | None = None, *, weights_only: bool = True
) -> str:
    """Turn the sharded checkpoint directory ``src_dir`` into one ``torch.save`` file; return the file's path.

    The file (default: ``<src_dir>.consolidated``) holds the same nested dict that was saved, with full tensors:
    ``{"model": {name: tensor}, "optimizer": {"state": {name: {...}}, "param_groups": [...]}, ...}``; optimizer
    state is keyed by parameter name, as ``torch.distributed.checkpoint.state_dict`` writes it. It is written
    atomically and reads back with ``torch.load(path, weights_only=True)``. Runs in one process, no process group
    needed; it holds the whole checkpoint in CPU memory.
    """
    source = os.fspath(src_dir).rstrip("/\\")
    output = os.fspath(out_file) if out_file is not None else f"{source}.consolidated"
    if os.path.abspath(output) == os.path.abspath(source):
        raise ValueError(f"The output file {output!r} would replace the checkpoint it is made from; choose another.")
    if os.path.isdir(output):
        raise ValueError(f"The output file {output!r} is an existing directory; choose a file path.")
    state = read_sharded_checkpoint(source, weights_only=weights_only)
    atomic_save(state, output)
    return output


def _plain_error(path: PathLike, err: BaseException) -> Exception:
    """DCP's ``CheckpointException`` (a ``BaseException``) as an ordinary exception with each rank's cause."""
    failures = {rank: failure[0] for rank, failure in (getattr(err, "failures", None) or {}).items()}
    unsafe = [exc for exc in failures.values() if isinstance(exc, UnsafeCheckpointError)]
    if unsafe:
        return UnsafeCheckpointError(str(unsafe[0]))
    summary = "; ".join(f"rank {rank}: {type(exc).__name__}: {exc}" for rank, exc in sorted(failures.items()))
    message = f"Loading the sharded checkpoint {os.fspath(path)!r} failed ({summary or err})"
    kinds = {type(exc) for exc in failures.values()}
    kind = kinds.pop() if len(kinds) == 1 else RuntimeError
    for base in (ValueError, TypeError, OSError):  # keep the kind of error when every rank agrees on it
        if issubclass(kind, base):
            return base(message)
    return RuntimeError(message)


def _refusal(err: Exception) -> str:
    """The line of torch's weights-only error that names what it refused."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return next((line for line in lines if "GLOBAL" in line), lines[0] if lines else type(err).__name__)
