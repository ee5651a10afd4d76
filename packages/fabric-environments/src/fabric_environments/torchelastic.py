"""Processes started by torch's elastic launcher (``torchrun``, ``python -m torch.distributed.run``, ``fabric run``)."""

from __future__ import annotations

import os

from typing_extensions import override

from fabric_environments._env import RankBound, check_world_size
from fabric_environments._fixed_ranks import FixedRanksEnvironment

#: the variables torchrun exports to every worker; all of them present means torchrun started this process
TORCHELASTIC_VARIABLES = ("RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


class TorchElasticEnvironment(FixedRanksEnvironment):
    """The environment of a worker started by torchrun: every value comes from the variables torchrun exports."""

    name = "torchelastic"
    detection_priority = 500  # torchrun inside a SLURM/LSF/MPI allocation still owns the processes

    @staticmethod
    @override
    def detect() -> bool:
        return all(name in os.environ for name in TORCHELASTIC_VARIABLES)

    @override
    def node_rank(self) -> int:
        return self._read("GROUP_RANK")

    def local_world_size(self) -> int:
        """How many workers torchrun started on this node (``LOCAL_WORLD_SIZE``)."""
        return self._read("LOCAL_WORLD_SIZE")

    @override
    def _local_size(self) -> tuple[str, int | None]:
        return "LOCAL_WORLD_SIZE", self.local_world_size()

    @override
    def _rank_bounds(self) -> list[RankBound]:
        """Also ``GROUP_RANK`` against ``GROUP_WORLD_SIZE`` (the number of nodes), which torchrun exports too."""
        nodes = self._read("GROUP_WORLD_SIZE") if os.environ.get("GROUP_WORLD_SIZE", "").strip() else None
        return [*super()._rank_bounds(), ("GROUP_RANK", self.node_rank(), "GROUP_WORLD_SIZE", nodes)]

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
