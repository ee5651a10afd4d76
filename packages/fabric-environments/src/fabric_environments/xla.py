"""Processes on XLA devices (TPUs), whose ranks torch_xla's PJRT runtime knows; torch_xla is imported lazily."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from typing_extensions import override

from fabric_environments._env import RankBound, first_env_int, first_set
from fabric_environments._fixed_ranks import FixedRanksEnvironment
from fabric_utils import TORCH_XLA, MissingDependencyError, xla_available

#: variables that say which host of a multi-host XLA slice this is (torch_xla's, then the TPU VM's)
XLA_HOST_VARIABLES = ("XRT_HOST_ORDINAL", "TPU_WORKER_ID", "CLOUD_TPU_TASK_ID")


class XLAEnvironment(FixedRanksEnvironment):
    """The environment of an XLA run: world size and ranks come from ``torch_xla.runtime``.

    fabric's XLA launcher starts one process per device, so processes are not created externally. The rendezvous
    is PJRT's own: there is no main address or port. Detected when torch_xla is installed and ``PJRT_DEVICE`` names
    the device to use.
    """

    name = "xla"
    detection_priority = 100

    def __init__(self) -> None:
        if not xla_available():
            raise MissingDependencyError(
                f"{type(self).__name__} requires `torch_xla`, which is not installed. Run: {TORCH_XLA.install}"
            )
        self._world_size: int | None = None

    @property
    @override
    def creates_processes_externally(self) -> bool:
        return False

    @property
    @override
    def main_address(self) -> str:
        raise NotImplementedError(f"{type(self).__name__} has no main address: PJRT handles the rendezvous.")

    @property
    @override
    def main_port(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} has no main port: PJRT handles the rendezvous.")

    @staticmethod
    @override
    def detect() -> bool:
        """torch_xla is installed and ``PJRT_DEVICE`` is set; never imports torch_xla."""
        try:
            return bool(os.environ.get("PJRT_DEVICE", "").strip()) and xla_available()
        except Exception:  # detection must never fail a run
            return False

    @override
    def world_size(self) -> int:
        """The number of XLA processes (asked once: the runtime's answer does not change during a run)."""
        if self._world_size is None:
            self._world_size = int(_runtime().world_size())
        return self._world_size

    @override
    def global_rank(self) -> int:
        return int(_runtime().global_ordinal())

    @override
    def local_rank(self) -> int:
        return int(_runtime().local_ordinal())

    @override
    def node_rank(self) -> int:
        """This host's index in a multi-host slice (``XRT_HOST_ORDINAL``, ``TPU_WORKER_ID``...); 0 on one host."""
        return first_env_int(XLA_HOST_VARIABLES, 0)

    @override
    def _rank_bounds(self) -> list[RankBound]:
        """Only the host variable: asking the runtime for ranks before the launcher starts the processes would
        initialise it in the parent process, which torch_xla forbids (PJRT's ranks are consistent anyway)."""
        host_variable = first_set(XLA_HOST_VARIABLES)
        return [(host_variable, self.node_rank(), "", None)] if host_variable else []

    @override
    def teardown(self) -> None:
        self._world_size = None


def _runtime() -> ModuleType:
    """``torch_xla.runtime``, imported on first use (the constructor has checked that torch_xla is available)."""
    return importlib.import_module("torch_xla.runtime")
