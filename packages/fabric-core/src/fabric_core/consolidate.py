"""Turn a sharded ``torch.distributed.checkpoint`` directory into one ``torch.save`` file (``fabric consolidate``).

This does what ``torch.distributed.checkpoint.format_utils.dcp_to_torch_save`` does, without ever running code from
the checkpoint: torch reads the directory's ``.metadata`` with plain ``pickle`` and its non-tensor entries with
``torch.load(weights_only=False)``. Here the metadata is read by an unpickler that only builds the checkpoint
metadata types (refusing any other global with an error that names it), and non-tensor entries are loaded with
``weights_only=True``. The written file is then read back with ``torch.load(weights_only=True)`` to prove it loads.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import itertools
import os
import pickle
import re
import uuid
import warnings
from typing import Any

import torch

from fabric_io import METADATA_FILE, check_sharded_checkpoint
from fabric_utils import PathLike

_SAFE_MODULE_PREFIX = "torch.distributed.checkpoint."
_SAFE_GLOBALS = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("torch.serialization", "_MEM_FORMAT_ENCODING"),
    ("collections", "OrderedDict"),
    ("pathlib", "Path"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
}


class UnsafeCheckpointError(ValueError):
    """The checkpoint holds something other than tensors, metadata and plain data (e.g. a pickled callable)."""


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP metadata objects and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith(_SAFE_MODULE_PREFIX):
            obj = super().find_class(module, name)
            if isinstance(obj, type) and (dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum)):
                return obj
        raise UnsafeCheckpointError(
            f"The checkpoint metadata refers to {module}.{name}, which is not a checkpoint metadata type; refusing to"
            " load it (it could run code)."
        )


def read_metadata_safely(directory: str) -> Any:
    """The ``Metadata`` of a DCP directory, read without running code from the file."""
    with open(os.path.join(directory, METADATA_FILE), "rb") as file:
        try:
            metadata = _MetadataUnpickler(file).load()
        except UnsafeCheckpointError:
            raise
        except Exception as err:
            raise ValueError(f"The metadata of the sharded checkpoint {directory!r} is corrupt: {err}") from err
    from torch.distributed.checkpoint.metadata import Metadata

    if not isinstance(metadata, Metadata):
        raise ValueError(f"{directory!r}: {METADATA_FILE} does not hold checkpoint metadata")
    return metadata


def _safe_reader(directory: str, metadata: Any) -> Any:
    """A DCP reader that hands out ``metadata`` (read safely beforehand) instead of unpickling the file itself."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(directory)


def _set_nested(container: dict[Any, Any], path: tuple[Any, ...], value: Any) -> None:
    """``container[path[0]][path[1]]... = value``, creating dicts (or lists for int keys) on the way."""
    node: Any = container
    for key, following in itertools.pairwise(path):
        empty: Any = [] if isinstance(following, int) else {}
        if isinstance(node, list):
            while len(node) <= key:
                node.append(None)
            if node[key] is None:
                node[key] = empty
        else:
            node.setdefault(key, empty)
        node = node[key]
    last = path[-1]
    if isinstance(node, list):
        while len(node) <= last:
            node.append(None)
    node[last] = value


def _safe_planner() -> Any:
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    class SafePlanner(DefaultLoadPlanner):
        """Rebuilds the full state dict from the metadata; non-tensor entries are loaded with weights_only=True."""

        def set_up_planner(self, state_dict: Any, metadata: Any = None, is_coordinator: bool = False) -> None:
            for key, item in metadata.state_dict_metadata.items():
                value = (
                    torch.empty(item.size, dtype=item.properties.dtype)
                    if isinstance(item, TensorStorageMetadata)
                    else None
                )
                path = (metadata.planner_data or {}).get(key, (key,))
                _set_nested(state_dict, tuple(path), value)
            super().set_up_planner(state_dict, metadata, is_coordinator)

        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            try:
                loaded = torch.load(value, weights_only=True)
            except pickle.UnpicklingError as err:
                fqn = read_item.dest_index.fqn
                found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
                culprit = f" (it refers to {found.group(1)})" if found else ""
                raise UnsafeCheckpointError(
                    f"The entry {fqn!r} of the checkpoint is not plain data{culprit}; weights-only loading refused it."
                ) from None
            path = self.mappings.get(read_item.dest_index.fqn, (read_item.dest_index.fqn,))
            _set_nested(self.original_state_dict, tuple(path), loaded)

    return SafePlanner(flatten_state_dict=True, flatten_sharded_tensors=True)


def load_sharded_as_full(path: PathLike) -> dict[str, Any]:
    """The full (unsharded) contents of a sharded checkpoint directory, loaded in this single process."""
    directory = check_sharded_checkpoint(path)
    metadata = read_metadata_safely(directory)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    planner = _safe_planner()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            dcp.load({}, storage_reader=_safe_reader(directory, metadata), planner=planner, no_dist=True)
    except CheckpointException as err:
        failures = [f[0] if isinstance(f, tuple) else f for f in err.failures.values()]
        unsafe = next((f for f in failures if isinstance(f, UnsafeCheckpointError)), None)
        if unsafe is not None:
            raise UnsafeCheckpointError(str(unsafe)) from None
        raise ValueError(
            f"Could not read the sharded checkpoint {directory!r}: {failures[0] if failures else err}"
        ) from None
    return planner.original_state_dict  # type: ignore[no-any-return]


def consolidate_checkpoint(path: PathLike, output_file: PathLike | None = None) -> str:
    """Write the sharded checkpoint at ``path`` as one file (default ``<path>.consolidated``); return its path.

    The file is written atomically and verified to load with ``torch.load(weights_only=True)``.
    """
    output = os.fspath(output_file) if output_file is not None else os.fspath(path).rstrip("/\\") + ".consolidated"
    if os.path.isdir(output):
        raise ValueError(f"The output file {output!r} is an existing directory; choose a file path.")
    state = load_sharded_as_full(path)
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(output)}.{uuid.uuid4().hex}.tmp")
    try:
        torch.save(state, temporary)
        torch.load(temporary, weights_only=True, map_location="cpu")
        os.replace(temporary, output)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return output
