"""Reading sharded (``torch.distributed.checkpoint``, DCP) checkpoints without running code from them.

DCP itself reads a directory's ``.metadata`` with plain ``pickle`` and its non-tensor entries with
``torch.load(weights_only=False)``, and opens whatever storage file the metadata names: a crafted checkpoint could
run code, or make a load read another checkpoint's data. Every sharded read of fabric goes through this module:

- with ``weights_only=True`` (the default) the metadata goes through an unpickler that builds DCP's own metadata
  records and nothing else, and non-tensor entries are read with ``torch.load(weights_only=True)``; anything else
  raises ``UnsafeCheckpointError`` naming it. ``weights_only=False`` unpickles both fully (trusted checkpoints only);
- always (``weights_only=False`` too), every file that the metadata names, and the metadata file itself, must
  resolve inside the checkpoint directory, symbolic links followed; otherwise ``UnsafeCheckpointError``.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import os
import pickle
import warnings
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from fabric_io.errors import UnsafeCheckpointError, resolve_inside
from fabric_io.sharded import METADATA_FILE, check_sharded_checkpoint, unwrap_checkpoint_error
from fabric_io.torch_io import refused_global
from fabric_utils import PathLike

if TYPE_CHECKING:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import Metadata

#: the globals a DCP metadata file may name besides DCP's own dataclasses and enums (and torch's dtypes)
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
_OPT_OUT = "Pass weights_only=False only if you trust where the checkpoint came from (unpickling it can run code)."


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
            f"unpickle it (weights_only=True). {_OPT_OUT}"
        )


def read_sharded_metadata(path: PathLike, *, weights_only: bool = True) -> Metadata:
    """The DCP metadata of the sharded checkpoint at ``path`` (``.state_dict_metadata`` maps each saved key to its
    shape); ``UnsafeCheckpointError`` for a metadata file that would run code or names files outside ``path``.

    ``weights_only=True`` (the default) unpickles only DCP's metadata records; ``weights_only=False`` unpickles
    anything (trusted checkpoints only). The files it names are checked either way (see the module docstring).
    """
    _check_flag("read_sharded_metadata", weights_only)
    return _read_metadata(check_sharded_checkpoint(path), path, weights_only)


def _read_metadata(directory: str, path: PathLike, weights_only: bool) -> Metadata:
    from torch.distributed.checkpoint.metadata import Metadata

    with open(resolve_inside(directory, METADATA_FILE, what="metadata file"), "rb") as file:
        try:
            metadata = _MetadataUnpickler(file).load() if weights_only else pickle.load(file)
        except UnsafeCheckpointError:
            raise
        except Exception as err:
            raise ValueError(f"The metadata of the sharded checkpoint {os.fspath(path)!r} is corrupt: {err}") from err
    if not isinstance(metadata, Metadata):
        raise ValueError(f"{os.fspath(path)!r}: {METADATA_FILE} holds {type(metadata).__name__}, not DCP metadata")
    _check_storage_files(metadata, directory)
    return metadata


def load_sharded_checkpoint(
    state_dict: dict[str, Any],
    path: PathLike,
    *,
    strict: bool = True,
    weights_only: bool = True,
    process_group: dist.ProcessGroup | None = None,
    collective: bool = True,
) -> dict[str, Any]:
    """Load the DCP checkpoint at ``path`` into ``state_dict`` in place (resharding to this run's layout); return it.

    Raises ``FileNotFoundError`` when ``path`` does not exist and ``ValueError`` when it is not a complete sharded
    checkpoint (a file, or a directory without ``.metadata``: an interrupted save). With ``strict=False`` keys of
    ``state_dict`` that the checkpoint lacks are left as they are instead of raising (``RuntimeError`` naming the
    missing key with ``strict=True``; a shape mismatch raises ``ValueError``).

    ``weights_only=True`` (the default) reads the metadata and the non-tensor entries with restricted unpicklers and
    raises ``UnsafeCheckpointError`` naming what they refuse; ``weights_only=False`` unpickles them fully, for
    checkpoints from a source you trust. A file the checkpoint names outside ``path`` is refused either way.

    Collective by default: every rank of ``process_group`` (the default group; none in a single process) calls it
    with its own shards. ``collective=False`` reads in this process alone, even while a process group is
    initialised (then tensors load whole).
    """
    _check_flag("load_sharded_checkpoint", weights_only)
    if not collective and process_group is not None:
        raise ValueError(
            f"load_sharded_checkpoint(collective=False) reads in this process alone: it takes no process_group, got "
            f"{process_group!r}"
        )
    directory = check_sharded_checkpoint(path)
    metadata = _read_metadata(directory, path, weights_only)
    distributed = collective and dist.is_available() and dist.is_initialized()
    import torch.distributed.checkpoint as dcp  # imported on use: it takes a second to import

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to (load|save) in a single process")
        try:
            dcp.load(
                state_dict,
                storage_reader=_reader(directory, metadata),
                planner=_planner(strict, weights_only),
                process_group=process_group,
                no_dist=not distributed,
            )
        except dcp.CheckpointException as err:
            raise unwrap_checkpoint_error("Loading", path, err) from err
    return state_dict


def _check_flag(function: str, weights_only: Any) -> None:
    if not isinstance(weights_only, bool):
        raise TypeError(f"{function}(weights_only=...) must be True or False, got {weights_only!r}")


def _check_storage_files(metadata: Metadata, directory: str) -> None:
    """Every storage file that ``metadata`` names lies inside ``directory`` (see ``resolve_inside``)."""
    checked: set[str] = set()
    for index, info in (metadata.storage_data or {}).items():
        name = getattr(info, "relative_path", None)
        if isinstance(name, str) and name in checked:
            continue
        entry = getattr(index, "fqn", index)
        resolve_inside(directory, name, what=f"storage file of {entry!r}")  # type: ignore[arg-type]
        checked.add(name)  # type: ignore[arg-type]


def _reader(directory: str, metadata: Metadata) -> FileSystemReader:
    """DCP's file reader, handed the metadata that ``read_sharded_metadata`` read and checked (instead of unpickling
    ``.metadata`` again with plain ``pickle``), so that it opens only the files checked there."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class _CheckedReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
            storage_meta = getattr(metadata, "storage_meta", None) or StorageMeta()
            storage_meta.load_id = self.load_id
            metadata.storage_meta = storage_meta
            return metadata

    return _CheckedReader(directory)


def _planner(strict: bool, weights_only: bool) -> Any:
    from torch.distributed.checkpoint import DefaultLoadPlanner

    if not weights_only:
        return DefaultLoadPlanner(allow_partial_load=not strict)
    # DCP's own helper to put a loaded value back where the flattened key came from (DefaultLoadPlanner uses it)
    from torch.distributed.checkpoint._traverse import set_element

    class _WeightsOnlyPlanner(DefaultLoadPlanner):
        """DCP's planner, with non-tensor entries read by ``torch.load(weights_only=True)``."""

        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            fqn = read_item.dest_index.fqn
            try:
                loaded = torch.load(value, weights_only=True)
            except pickle.UnpicklingError as err:
                raise UnsafeCheckpointError(
                    f"The checkpoint entry {fqn!r} holds {refused_global(err)}, which is not a tensor or plain data; "
                    f"refusing to unpickle it (weights_only=True). {_OPT_OUT}"
                ) from None
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[fqn], loaded)
            else:
                self.state_dict[fqn] = loaded

    return _WeightsOnlyPlanner(allow_partial_load=not strict)
