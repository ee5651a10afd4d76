"""``XLACheckpointIO``: ``TorchCheckpointIO`` for XLA devices (TPUs): tensors are brought to the CPU before saving."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch
from typing_extensions import override

from fabric_io.torch_io import TorchCheckpointIO
from fabric_utils import TORCH_XLA, MissingDependencyError, PathLike, apply_to_collection, xla_available


class XLACheckpointIO(TorchCheckpointIO):
    """Saves checkpoints that hold XLA tensors: they are moved to the CPU first, so the file loads anywhere.

    ``torch_xla`` is imported only when a checkpoint actually holds XLA tensors (to run the pending graph once,
    instead of once per tensor, before the copies). Which rank writes is the strategy's decision, not this object's.
    """

    def __init__(self, storage_options: Mapping[str, Any] | None = None, *, fsync: bool = False) -> None:
        if not xla_available():
            raise MissingDependencyError(
                f"XLACheckpointIO requires `torch_xla`, which is not installed. Run: {TORCH_XLA.install}"
            )
        super().__init__(storage_options, fsync=fsync)

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Any | None = None) -> None:
        super().save_checkpoint(_to_cpu(checkpoint), path, storage_options)


def _to_cpu(checkpoint: Any) -> Any:
    """``checkpoint`` with every tensor that is not on the CPU replaced by a CPU copy (CPU tensors are kept)."""
    synced = False

    def move(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal synced
        if tensor.device.type == "cpu":
            return tensor
        if tensor.device.type == "xla" and not synced:
            _sync_xla()
            synced = True
        return tensor.detach().to("cpu")

    return apply_to_collection(checkpoint, torch.Tensor, move)


def _sync_xla() -> None:
    """Execute the pending XLA graph once, so that the copies below only transfer data."""
    torch_xla = TORCH_XLA.require("Saving XLA tensors")
    sync = getattr(torch_xla, "sync", None)
    if sync is not None:
        sync()
        return
    importlib.import_module("torch_xla.core.xla_model").mark_step()
