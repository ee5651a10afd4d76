"""The ``ClusterEnvironment`` base: where the processes of a run come from and how they find each other."""

from __future__ import annotations

from abc import ABC, abstractmethod


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

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:  # noqa: B027 - optional hook
        """Raise ``ValueError`` when the requested devices/nodes contradict what the environment provides."""

    def teardown(self) -> None:  # noqa: B027 - optional hook
        """Undo anything the environment set up for the run."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
