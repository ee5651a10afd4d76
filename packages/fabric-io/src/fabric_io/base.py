"""The ``CheckpointIO`` base: how a checkpoint dictionary is written to and read from storage."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from fabric_utils import PathLike


class CheckpointIO(ABC):
    """Saves/loads a checkpoint (a dict) at a path. Strategies decide *what* is saved; CheckpointIO decides *how*."""

    @abstractmethod
    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` so that an interrupted save leaves any previous file at ``path`` intact."""

    @abstractmethod
    def load_checkpoint(
        self, path: PathLike, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Read the checkpoint at ``path``. ``weights_only`` defaults to True (no arbitrary code from pickles).

        Raises ``FileNotFoundError`` naming the path when it does not exist and ``ValueError`` naming the path when
        the file is corrupt or refused.
        """

    @abstractmethod
    def remove_checkpoint(self, path: PathLike) -> None:
        """Remove the file or directory at ``path``."""

    def teardown(self) -> None:  # noqa: B027 - an optional hook: nothing to finish by default
        """Finish pending work (e.g. an asynchronous save) and release resources."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
