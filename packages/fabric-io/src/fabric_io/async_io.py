"""``AsyncCheckpointIO``: hand a save to a background thread so training continues while the file is written."""

from __future__ import annotations

import threading
from typing import Any

import torch
from typing_extensions import override

from fabric_io.background import BackgroundSave
from fabric_io.base import CheckpointIO
from fabric_io.torch_io import TorchCheckpointIO
from fabric_utils import PathLike, apply_to_collection


class AsyncCheckpointIO(CheckpointIO):
    """Wraps another ``CheckpointIO`` and runs its ``save_checkpoint`` in a background thread.

    - At most one save runs at a time: a new save first waits for the previous one.
    - An exception raised by a background save is re-raised (once) by the next call on this object -- save, load,
      remove, ``wait`` -- or by ``teardown``; a save that follows a failed one is not started.
    - ``load_checkpoint`` and ``remove_checkpoint`` wait for the pending save first, so they see its result.
    - ``teardown`` waits for the pending save (no thread outlives it), then tears the wrapped object down.

    Args:
        checkpoint_io: the object that does the writing; ``TorchCheckpointIO()`` by default.
        snapshot: copy every tensor of the checkpoint on the calling thread before returning, so that training
            may update parameters in place while the file is written. Turn it off only when nothing in the
            checkpoint changes until the save has finished (it saves the copy's time and memory).
    """

    def __init__(self, checkpoint_io: CheckpointIO | None = None, *, snapshot: bool = True) -> None:
        if checkpoint_io is not None and not isinstance(checkpoint_io, CheckpointIO):
            raise TypeError(f"checkpoint_io must be a CheckpointIO, got {type(checkpoint_io).__name__}.")
        self._checkpoint_io = checkpoint_io if checkpoint_io is not None else TorchCheckpointIO()
        self._snapshot = snapshot
        self._lock = threading.Lock()
        self._pending: BackgroundSave | None = None

    @property
    def checkpoint_io(self) -> CheckpointIO:
        """The wrapped object that does the actual saving and loading."""
        return self._checkpoint_io

    @property
    def is_saving(self) -> bool:
        """Whether a background save is still running."""
        pending = self._pending
        return pending is not None and not pending.done()

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Any | None = None) -> None:
        """Start saving ``checkpoint`` to ``path`` in the background, after the previous save has finished."""
        with self._lock:
            self._finish_pending()
            if self._snapshot:
                checkpoint = _snapshot_tensors(checkpoint)
            save = self._checkpoint_io.save_checkpoint
            self._pending = BackgroundSave(save, checkpoint, path, storage_options, path=str(path))

    @override
    def load_checkpoint(
        self, path: PathLike, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Wait for the pending save, then read with the wrapped object. ``weights_only`` defaults to True: the
        wrapped object is always told so, whatever its own default (``weights_only=False`` opts out)."""
        self.wait()
        weights_only = True if weights_only is None else weights_only
        return self._checkpoint_io.load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    @override
    def remove_checkpoint(self, path: PathLike) -> None:
        self.wait()
        self._checkpoint_io.remove_checkpoint(path)

    def wait(self) -> None:
        """Block until the pending save (if any) has finished; re-raise its exception if it failed."""
        with self._lock:
            self._finish_pending()

    @override
    def teardown(self) -> None:
        """Wait for the pending save, tear down the wrapped object, then re-raise a background error if any."""
        try:
            self.wait()
        finally:
            self._checkpoint_io.teardown()

    @override
    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._checkpoint_io!r})"

    def _finish_pending(self) -> None:
        """Join the running save (caller holds the lock) and raise what it raised, once."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.wait()


def _snapshot_tensors(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Copy every tensor of ``checkpoint`` (one copy per distinct tensor object, so tied tensors stay tied)."""
    copies: dict[int, torch.Tensor] = {}

    def copy(tensor: torch.Tensor) -> torch.Tensor:
        key = id(tensor)
        if key not in copies:
            copies[key] = tensor.detach().clone()
        return copies[key]

    return apply_to_collection(checkpoint, torch.Tensor, copy)
