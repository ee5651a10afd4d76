"""The main node's address and port where most launchers give them: ``MASTER_ADDR`` and ``MASTER_PORT``."""

from __future__ import annotations

import os
from abc import ABC

from typing_extensions import override

from fabric_environments._env import env_port, unset_variable_error
from fabric_environments.base import ClusterEnvironment


class MainNodeFromVariables(ClusterEnvironment, ABC):
    """``main_address`` and ``main_port`` are ``MASTER_ADDR`` and ``MASTER_PORT`` when those are set (blank counts
    as unset), and otherwise what the launcher implies: ``_default_address()`` and ``_default_port()``, which
    subclasses override. By default the address is ``127.0.0.1`` and the port is required."""

    @property
    @override
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR", "").strip() or self._default_address()

    @property
    @override
    def main_port(self) -> int:
        port = env_port("MASTER_PORT")
        return port if port is not None else self._default_port()

    def _default_address(self) -> str:
        return "127.0.0.1"

    def _default_port(self) -> int:
        raise unset_variable_error("MASTER_PORT", owner=type(self).__name__)
