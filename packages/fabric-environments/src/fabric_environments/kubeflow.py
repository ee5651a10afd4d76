"""Pods of a Kubeflow ``PyTorchJob``: one process per pod, chosen explicitly (never detected)."""

from __future__ import annotations

from typing_extensions import override

from fabric_environments._env import RankBound, check_world_size, unset_variable_error
from fabric_environments._fixed_ranks import FixedRanksEnvironment


class KubeflowEnvironment(FixedRanksEnvironment):
    """A pod of a Kubeflow ``PyTorchJob``: ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE`` and ``RANK`` are set.

    Each pod runs one process, so the local rank is 0 and the node rank equals the global rank. Kubeflow's variables
    are the same as those of other launchers, so this environment is never detected: pass it explicitly, e.g.
    ``Fabric(plugins=[KubeflowEnvironment()])``.
    """

    name = "kubeflow"
    detection_priority = 0

    @override
    def _default_address(self) -> str:
        raise unset_variable_error("MASTER_ADDR", owner=type(self).__name__)

    @staticmethod
    @override
    def detect() -> bool:
        """Always False: a Kubeflow pod cannot be told apart from other launchers, so choose this one explicitly."""
        return False

    @override
    def local_rank(self) -> int:
        return 0

    @override
    def node_rank(self) -> int:
        return self.global_rank()

    @override
    def _rank_bounds(self) -> list[RankBound]:
        """``RANK`` against ``WORLD_SIZE``: the local rank is always 0 and the node rank is the global rank."""
        return [("RANK", self.global_rank(), "WORLD_SIZE", self.world_size())]

    @override
    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        check_world_size(
            "Kubeflow PyTorchJob",
            self.world_size(),
            num_devices,
            num_nodes,
            hint=f"HINT: each pod runs one process: use devices=1 and num_nodes={self.world_size()}.",
        )
