"""Launchers: how the processes of a run are started."""

from fabric_strategies.launchers.base import Launcher
from fabric_strategies.launchers.multiprocessing import (
    MultiprocessingLauncher,
    ProcessFailedError,
    RemoteTraceback,
)
from fabric_strategies.launchers.subprocess_script import SubprocessScriptLauncher

__all__ = [
    "Launcher",
    "MultiprocessingLauncher",
    "ProcessFailedError",
    "RemoteTraceback",
    "SubprocessScriptLauncher",
]
