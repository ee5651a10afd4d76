"""The shared base of environments whose launcher (or runtime) fixes the world size and the ranks."""

from __future__ import annotations

from abc import ABC
from typing import ClassVar

from typing_extensions import override

from fabric_environments._env import RankBound, env_int, ignore_setter
from fabric_environments._main_node import MainNodeFromVariables


class FixedRanksEnvironment(MainNodeFromVariables, ABC):
    """Ranks and sizes come from the launcher, so ``set_world_size`` and ``set_global_rank`` change nothing: they
    warn when asked for a value other than the launcher's. The processes are started externally unless a subclass
    says otherwise.

    ``world_size()``, ``global_rank()`` and ``local_rank()`` read the integers in the environment variables that
    the class names (torchrun's by default); environments that learn them otherwise override the methods.
    """

    _world_size_variable: ClassVar[str] = "WORLD_SIZE"
    _global_rank_variable: ClassVar[str] = "RANK"
    _local_rank_variable: ClassVar[str] = "LOCAL_RANK"

    @property
    @override
    def creates_processes_externally(self) -> bool:
        return True

    @override
    def world_size(self) -> int:
        return self._read(self._world_size_variable)

    @override
    def global_rank(self) -> int:
        return self._read(self._global_rank_variable)

    @override
    def local_rank(self) -> int:
        return self._read(self._local_rank_variable)

    @override
    def set_world_size(self, size: int) -> None:
        ignore_setter(type(self).__name__, "world_size", size, self.world_size())

    @override
    def set_global_rank(self, rank: int) -> None:
        ignore_setter(type(self).__name__, "global_rank", rank, self.global_rank())

    @override
    def _rank_bounds(self) -> list[RankBound]:
        """The global rank against the world size and the local rank, named by the variables they come from."""
        return [
            (self._global_rank_variable, self.global_rank(), self._world_size_variable, self.world_size()),
            (self._local_rank_variable, self.local_rank(), *self._local_size()),
        ]

    def _local_size(self) -> tuple[str, int | None]:
        """The variable that holds the number of processes on this node and its value; ``("", None)`` if unknown."""
        return "", None

    def _read(self, name: str) -> int:
        """The integer in the environment variable ``name``; the error for an unset one names this environment."""
        return env_int(name, owner=type(self).__name__)
