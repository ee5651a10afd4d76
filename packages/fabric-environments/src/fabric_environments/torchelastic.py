"""Processes started by torch's elastic launcher (``torchrun``, ``python -m torch.distributed.run``, ``fabric run``)."""

from __future__ import annotations

import os

from typing_extensions import override

from fabric_environments._env import check_world_size, env_int, env_port, ignore_setter
from fabric_environments.base import ClusterEnvironment

#: the variables torchrun exports to every worker; all of them present means torchrun started this process
TORCHELASTIC_VARIABLES = ("RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


class TorchElasticEnvironment(ClusterEnvironment):
    """The environment of a worker started by torchrun: every value comes from the variables torchrun exports."""

    name = "torchelastic"
    detection_priority = 500  # torchrun inside a SLURM/LSF/MPI allocation still owns the processes

    @property
    @override
    def creates_processes_externally(self) -> bool:
        return True

    @property
    @override
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR", "").strip() or "127.0.0.1"

    @property
    @override
    def main_port(self) -> int:
        port = env_port("MASTER_PORT")
        if port is None:
            raise ValueError(f"{type(self).__name__} needs the environment variable MASTER_PORT, which is not set.")
        return port

    @staticmethod
    @override
    def detect() -> bool:
        return all(name in os.environ for name in TORCHELASTIC_VARIABLES)

    @override
    def world_size(self) -> int:
        return self._read("WORLD_SIZE")

    @override
    def set_world_size(self, size: int) -> None:
        ignore_setter(type(self).__name__, "world_size", size, self.world_size())

    @override
    def global_rank(self) -> int:
        return self._read("RANK")

    @override
    def set_global_rank(self, rank: int) -> None:
        ignore_setter(type(self).__name__, "global_rank", rank, self.global_rank())

    @override
    def local_rank(self) -> int:
        return self._read("LOCAL_RANK")

    @override
    def node_rank(self) -> int:
        return self._read("GROUP_RANK")

    def local_world_size(self) -> int:
        """How many workers torchrun started on this node (``LOCAL_WORLD_SIZE``)."""
        return self._read("LOCAL_WORLD_SIZE")

    @override
    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        local_world_size = self.local_world_size()
        if local_world_size != num_devices:
            raise ValueError(
                f"You set devices={num_devices}, but torchrun started {local_world_size} processes on this node"
                f" (LOCAL_WORLD_SIZE={local_world_size}). HINT: set devices={local_world_size} or run torchrun"
                f" with --nproc-per-node={num_devices}."
            )
        check_world_size(
            "torchrun launcher",
            self.world_size(),
            num_devices,
            num_nodes,
            hint=f"HINT: run torchrun with --nnodes={num_nodes} --nproc-per-node={num_devices}.",
        )

    def _read(self, name: str) -> int:
        return env_int(name, owner=type(self).__name__)
