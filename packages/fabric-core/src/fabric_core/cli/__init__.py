"""The ``fabric`` command line: ``fabric run``, ``fabric consolidate`` and ``fabric env``.

Every mistake on the command line ends with exit code 2 and one line that names the bad value and the valid choices.
"""

from fabric_core.cli.main import cli, main

__all__ = ["cli", "main"]
