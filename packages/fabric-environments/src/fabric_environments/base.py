"""The ``ClusterEnvironment`` base: where the processes of a run come from and how they find each other."""

from __future__ import annotations

import signal
from abc import ABC, abstractmethod

from fabric_environments._env import RankBound, check_ranks


class ClusterEnvironment(ABC):
    """What a cluster (or the local machine) says about the run. Properties never write ``os.environ``."""

    name: str = ""
    #: detection order: higher is tried first by ``detect_environment`` (TorchElastic wins over SLURM, etc.)
    detection_priority: int = 0

    @property
    @abstractmethod
    def creates_processes_externally(self) -> bool:
        """True when something else (torchrun, srun, mpirun, ...) starts every process, so fabric must not."""

    @property
    @abstractmethod
    def main_address(self) -> str:
        """Address of the process with global rank 0."""

    @property
    @abstractmethod
    def main_port(self) -> int:
        """Port of the process with global rank 0."""

    @staticmethod
    @abstractmethod
    def detect() -> bool:
        """Whether the current process runs in this environment. Pure: reads the environment, never raises."""

    @abstractmethod
    def world_size(self) -> int: ...

    @abstractmethod
    def set_world_size(self, size: int) -> None: ...

    @abstractmethod
    def global_rank(self) -> int: ...

    @abstractmethod
    def set_global_rank(self, rank: int) -> None: ...

    @abstractmethod
    def local_rank(self) -> int: ...

    @abstractmethod
    def node_rank(self) -> int: ...

    def validate_ranks(self) -> None:
        """Raise ``ValueError`` naming the values when the ranks and sizes the environment reports contradict each
        other (a rank outside ``[0, size)``, a size below 1) or are not integers.

        ``Fabric`` calls it once, when it builds its parts, before any process group is set up. This default checks
        ``global_rank()`` against ``world_size()`` and that ``local_rank()`` and ``node_rank()`` are not negative;
        the built-in environments check their own variables (local and node ranks against their sizes where the
        launcher exports them).
        """
        check_ranks(type(self).__name__, self._rank_bounds())

    def _rank_bounds(self) -> list[RankBound]:
        """What :meth:`validate_ranks` checks: ``(rank name, rank, size name, size or None)`` for each rank."""
        return [
            ("global_rank()", self.global_rank(), "world_size()", self.world_size()),
            ("local_rank()", self.local_rank(), "", None),
            ("node_rank()", self.node_rank(), "", None),
        ]

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:  # noqa: B027 - optional hook
        """Raise ``ValueError`` when the requested devices/nodes contradict what the environment provides."""

    def teardown(self) -> None:  # noqa: B027 - optional hook
        """Undo anything the environment set up for the run."""

    def preemption_signals(self) -> tuple[signal.Signals, ...]:
        """The signals this environment's scheduler sends to warn that the job will end soon (a time limit, a
        preemption). ``Fabric.launch()`` watches them for ``fabric.preempted``. None by default."""
        return ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
