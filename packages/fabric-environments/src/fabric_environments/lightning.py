"""The local default: fabric starts the processes itself (or one process runs alone)."""

from __future__ import annotations

import os

from typing_extensions import override

from fabric_environments._env import (
    RankBound,
    check_ranks,
    env_int,
    find_free_port,
    first_env_int,
    first_set,
)
from fabric_environments._main_node import MainNodeFromVariables

_GLOBAL_RANK_VARIABLES = ("RANK", "GLOBAL_RANK")
_NODE_RANK_VARIABLES = ("NODE_RANK", "GROUP_RANK")


class LightningEnvironment(MainNodeFromVariables):
    """The environment of a run that fabric launches itself, on one machine or on several with ``num_nodes``.

    Values come from the usual variables when they are set (``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``,
    ``RANK``/``GLOBAL_RANK``, ``LOCAL_RANK``, ``NODE_RANK``/``GROUP_RANK``) and have local defaults otherwise:
    address ``127.0.0.1``, a free port picked once and cached, rank 0 of 1. The processes fabric starts learn the
    same address and port from :meth:`process_variables`. Values given to :meth:`set_world_size` and
    :meth:`set_global_rank` take precedence over the environment.
    """

    name = "lightning"
    detection_priority = -1000  # the fallback: detected everywhere, so it is tried last

    def __init__(self) -> None:
        self._picked_port: int | None = None
        self._world_size: int | None = None
        self._global_rank: int | None = None

    @property
    @override
    def creates_processes_externally(self) -> bool:
        """True in a process that was started with ``LOCAL_RANK`` set, i.e. by fabric or another launcher."""
        return "LOCAL_RANK" in os.environ

    @override
    def _default_port(self) -> int:
        """A free port, picked on first use and the same afterwards."""
        if self._picked_port is None:
            self._picked_port = find_free_port()
        return self._picked_port

    @staticmethod
    @override
    def detect() -> bool:
        return True

    @override
    def world_size(self) -> int:
        if self._world_size is not None:
            return self._world_size
        return env_int("WORLD_SIZE", 1)

    @override
    def set_world_size(self, size: int) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"The world size must be an int >= 1, got {size!r}.")
        self._world_size = size

    @override
    def global_rank(self) -> int:
        if self._global_rank is not None:
            return self._global_rank
        return first_env_int(_GLOBAL_RANK_VARIABLES, 0)

    @override
    def set_global_rank(self, rank: int) -> None:
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
            raise ValueError(f"The global rank must be an int >= 0, got {rank!r}.")
        self._global_rank = rank

    @override
    def local_rank(self) -> int:
        return env_int("LOCAL_RANK", 0)

    @override
    def node_rank(self) -> int:
        return first_env_int(_NODE_RANK_VARIABLES, 0)

    @override
    def _rank_bounds(self) -> list[RankBound]:
        """The ranks named by the variables they come from (or by the setter that fixed them)."""
        rank_name = "global rank (set)" if self._global_rank is not None else _source(_GLOBAL_RANK_VARIABLES)
        size_name = "world size (set)" if self._world_size is not None else "WORLD_SIZE"
        return [
            (rank_name, self.global_rank(), size_name, self.world_size()),
            ("LOCAL_RANK", self.local_rank(), "", None),
            (_source(_NODE_RANK_VARIABLES), self.node_rank(), "", None),
        ]

    @override
    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        """When fabric starts the processes, this node's rank must be one of the ``num_nodes`` nodes: its processes
        get the global ranks ``node_rank * devices + local_rank``, and a rank past the world would wait for ever."""
        if not self.creates_processes_externally:
            node_rank = (_source(_NODE_RANK_VARIABLES), self.node_rank(), "num_nodes", num_nodes)
            check_ranks(type(self).__name__, [node_rank])

    def process_variables(self, local_rank: int, local_world_size: int) -> dict[str, str]:
        """The environment variables a process that fabric starts on this node needs to join the run.

        A launcher merges them into the child's environment (never into ``os.environ`` of this process through a
        property); the child's ``LightningEnvironment`` then reports the same address and port and its own ranks.
        """
        if not 0 <= local_rank < local_world_size:
            raise ValueError(
                f"local_rank={local_rank} must be between 0 and local_world_size - 1 = {local_world_size - 1}."
            )
        world_size = self.world_size()
        if world_size < local_world_size:
            raise ValueError(
                f"The world size {world_size} is smaller than local_world_size={local_world_size}:"
                " call set_world_size(num_nodes * devices) before asking for process variables."
            )
        node_rank = self.node_rank()
        return {
            "MASTER_ADDR": self.main_address,
            "MASTER_PORT": str(self.main_port),
            "NODE_RANK": str(node_rank),
            "LOCAL_RANK": str(local_rank),
            "RANK": str(node_rank * local_world_size + local_rank),
            "WORLD_SIZE": str(world_size),
        }

    @override
    def teardown(self) -> None:
        """Forget the picked port, so that a later run in this process picks a fresh one."""
        self._picked_port = None


def _source(names: tuple[str, ...]) -> str:
    """The variable a value was read from: the first of ``names`` that is set, else the first name."""
    return first_set(names) or names[0]
