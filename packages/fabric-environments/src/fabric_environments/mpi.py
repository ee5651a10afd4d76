"""Processes started by ``mpirun``/``mpiexec``, asked through mpi4py (imported only when first used)."""

from __future__ import annotations

import importlib
import os
import socket
from typing import Any

from typing_extensions import override

from fabric_environments._env import RankBound, check_world_size, env_port, find_free_port
from fabric_environments._fixed_ranks import FixedRanksEnvironment
from fabric_utils import MPI4PY, MissingDependencyError

#: world-size variables that MPI launchers export (Open MPI, MPICH/Intel MPI through PMI, MVAPICH2)
MPI_WORLD_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


class MPIEnvironment(FixedRanksEnvironment):
    """The environment of a process started by an MPI launcher; ranks and sizes come from ``MPI.COMM_WORLD``.

    ``mpi4py.MPI`` (which initialises MPI) is imported on first use, not at construction. The node rank and local
    rank are found by exchanging host names across the world once; rank 0 then chooses the main address (its host,
    or ``127.0.0.1`` when every rank runs on one host; ``MASTER_ADDR`` when set) and port (``MASTER_PORT`` when set,
    else a free port) and broadcasts them, so every rank agrees. That exchange is collective: every rank must ask
    for the first of these values at the same point of the program, as a process-group setup does.
    """

    name = "mpi"
    detection_priority = 200

    def __init__(self) -> None:
        if not MPI4PY.available:
            raise MissingDependencyError(
                f"{type(self).__name__} requires `mpi4py`, which is not installed. Run: {MPI4PY.install}"
                " (it needs an MPI library such as Open MPI)."
            )
        self._comm_world: Any = None
        self._comm_local: Any = None
        self._node_rank: int | None = None
        self._main_address: str | None = None
        self._main_port: int | None = None

    @property
    @override
    def main_address(self) -> str:
        self._exchange_node_info()
        assert self._main_address is not None
        return self._main_address

    @property
    @override
    def main_port(self) -> int:
        self._exchange_node_info()
        assert self._main_port is not None
        return self._main_port

    @staticmethod
    @override
    def detect() -> bool:
        """An MPI launcher advertises more than one process and mpi4py is importable; never initialises MPI."""
        try:
            sizes = [os.environ.get(name, "").strip() for name in MPI_WORLD_SIZE_VARIABLES]
            launched = any(size.isdigit() and int(size) > 1 for size in sizes)
            return launched and MPI4PY.available
        except Exception:  # detection must never fail a run
            return False

    @override
    def world_size(self) -> int:
        return int(self._world().Get_size())

    @override
    def global_rank(self) -> int:
        return int(self._world().Get_rank())

    @override
    def local_rank(self) -> int:
        self._exchange_node_info()
        return int(self._comm_local.Get_rank())

    @override
    def node_rank(self) -> int:
        self._exchange_node_info()
        assert self._node_rank is not None
        return self._node_rank

    @override
    def _rank_bounds(self) -> list[RankBound]:
        """MPI's own rank and size; the local and node ranks need a collective exchange, so they are left out."""
        return [("MPI rank", self.global_rank(), "MPI world size", self.world_size())]

    @override
    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        check_world_size(
            "MPI launcher",
            self.world_size(),
            num_devices,
            num_nodes,
            hint=f"HINT: start {num_devices * num_nodes} processes, {num_devices} per node (mpirun -n/-npernode).",
        )

    @override
    def teardown(self) -> None:
        """Free the node-local communicator; MPI itself is finalised by mpi4py at exit."""
        if self._comm_local is not None:
            self._comm_local.Free()
        self._comm_local = None
        self._node_rank = None
        self._main_address = None
        self._main_port = None

    def _world(self) -> Any:
        if self._comm_world is None:
            MPI4PY.require(type(self).__name__)
            mpi = importlib.import_module("mpi4py.MPI")
            self._comm_world = mpi.COMM_WORLD
        return self._comm_world

    def _exchange_node_info(self) -> None:
        """Collective, once: node rank and node-local communicator from the host names; rank 0's address/port."""
        if self._node_rank is not None:
            return
        comm = self._world()
        hostname = socket.gethostname()
        hosts = list(dict.fromkeys(comm.allgather(hostname)))  # in rank order: rank 0's host is node 0
        node_rank = hosts.index(hostname)
        self._comm_local = comm.Split(color=node_rank, key=comm.Get_rank())
        choice: tuple[str, int] | str | None = None
        if comm.Get_rank() == 0:
            try:
                choice = _choose_main_address_and_port(hostname, single_host=len(hosts) == 1)
            except ValueError as err:  # tell the other ranks instead of leaving them waiting in bcast
                choice = str(err)
        choice = comm.bcast(choice, root=0)
        if isinstance(choice, str):
            raise ValueError(f"Rank 0 could not choose the main address and port: {choice}")
        assert choice is not None
        self._main_address, self._main_port = choice
        self._node_rank = node_rank


def _choose_main_address_and_port(hostname: str, *, single_host: bool) -> tuple[str, int]:
    address = os.environ.get("MASTER_ADDR", "").strip() or ("127.0.0.1" if single_host else hostname)
    port = env_port("MASTER_PORT")
    return address, port if port is not None else find_free_port()
