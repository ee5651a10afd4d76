"""The ``Launcher`` base: how the processes of a run are started."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any


class Launcher(ABC):
    """Starts the processes of a run and calls a function in them (or in this process, as one of them)."""

    @property
    @abstractmethod
    def is_interactive_compatible(self) -> bool:
        """Whether this launcher works in an interactive session (a notebook, the REPL)."""

    @property
    def reruns_script(self) -> bool:
        """Whether the other processes run the script again from the top, so that ``launch`` needs no function."""
        return False

    @abstractmethod
    def launch(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Start the processes and call ``function(*args, **kwargs)``; return what it returned on global rank 0."""
