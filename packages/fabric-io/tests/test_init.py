"""Freezes the public surface of ``fabric_io``: a change here is a change to what other packages may import."""

from __future__ import annotations

import subprocess
import sys

import fabric_io

PUBLIC = [
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


def test_public_surface_is_frozen() -> None:
    assert fabric_io.__all__ == PUBLIC
    for name in PUBLIC:
        assert getattr(fabric_io, name) is not None
    assert fabric_io.__version__ == "0.1.0"


def test_import_is_light_and_has_no_side_effects() -> None:
    code = (
        "import os, sys; before = dict(os.environ); import fabric_io; "
        "names = ('fsspec', 's3fs', 'torch_xla', 'boto3', 'moto', 'torch.distributed.checkpoint'); "
        "heavy = [m for m in names if m in sys.modules]; "
        "assert not heavy, heavy; assert dict(os.environ) == before"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
