"""fabric-io: how checkpoints reach storage -- atomic single files on any fsspec URL, async saves, XLA, sharded DCP.

``DeferredCopy`` (asynchronous saves) and ``XLACheckpointIO`` are imported on first access.
"""

from typing import TYPE_CHECKING

from fabric_io.async_io import AsyncCheckpointIO
from fabric_io.atomic import atomic_save
from fabric_io.background import BackgroundSave, CpuStaging, lower_thread_priority, stage_on_cpu
from fabric_io.base import CheckpointIO
from fabric_io.errors import UnsafeCheckpointError, resolve_inside
from fabric_io.filesystem import (
    check_path,
    exists,
    get_filesystem,
    is_remote_path,
    isdir,
    join_path,
    makedirs,
    remove_path,
)
from fabric_io.sharded import METADATA_FILE, check_sharded_checkpoint, is_sharded_checkpoint, save_sharded_checkpoint
from fabric_io.sharded_read import load_sharded_checkpoint, read_sharded_metadata
from fabric_io.shared_staging import SharedStaging
from fabric_io.torch_io import TorchCheckpointIO, refused_global
from fabric_io.writer import WRITER_VARIABLE, WriterProcess, runs_in_writer, shared_writer, writer_process_enabled
from fabric_utils import names_on_access

if TYPE_CHECKING:
    from fabric_io.deferred import DeferredCopy, trained_storages
    from fabric_io.xla import XLACheckpointIO

#: public names whose module is imported on first access
_ON_ACCESS = {
    "DeferredCopy": "fabric_io.deferred",
    "trained_storages": "fabric_io.deferred",
    "XLACheckpointIO": "fabric_io.xla",
}
__getattr__, __dir__ = names_on_access(__name__, _ON_ACCESS)

__version__ = "0.1.0"

__all__ = [
    "METADATA_FILE",
    "WRITER_VARIABLE",
    "AsyncCheckpointIO",
    "BackgroundSave",
    "CheckpointIO",
    "CpuStaging",
    "DeferredCopy",
    "SharedStaging",
    "TorchCheckpointIO",
    "UnsafeCheckpointError",
    "WriterProcess",
    "XLACheckpointIO",
    "atomic_save",
    "check_path",
    "check_sharded_checkpoint",
    "exists",
    "get_filesystem",
    "is_remote_path",
    "is_sharded_checkpoint",
    "isdir",
    "join_path",
    "load_sharded_checkpoint",
    "lower_thread_priority",
    "makedirs",
    "read_sharded_metadata",
    "refused_global",
    "remove_path",
    "resolve_inside",
    "runs_in_writer",
    "save_sharded_checkpoint",
    "shared_writer",
    "stage_on_cpu",
    "trained_storages",
    "writer_process_enabled",
]
