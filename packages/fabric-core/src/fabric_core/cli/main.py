"""The ``fabric`` command group and its entry point."""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

import click

from fabric_core import __version__
from fabric_core.cli.consolidate import consolidate
from fabric_core.cli.environment import env
from fabric_core.cli.migrate_command import migrate
from fabric_core.cli.run import run

USAGE_ERROR = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="fabric", message="%(prog)s %(version)s")
def cli() -> None:
    """fabric: run, inspect and convert fabric training jobs."""


cli.add_command(run)
cli.add_command(consolidate)
cli.add_command(env)
cli.add_command(migrate)


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``fabric`` executable: usage errors print one line and exit with code 2.

    Called without ``args`` (as the program), a command that ends normally ends the process with ``exit_now``.
    """
    try:
        code = cli.main(args=list(args) if args is not None else None, prog_name="fabric", standalone_mode=False)
    except click.UsageError as err:
        message = " ".join(err.format_message().split())
        command = err.ctx.command_path if err.ctx is not None else "fabric"
        click.echo(f"{command}: error: {message}", err=True)
        sys.exit(USAGE_ERROR)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as err:
        click.echo(f"fabric: error: {' '.join(err.format_message().split())}", err=True)
        sys.exit(err.exit_code)
    code = code if isinstance(code, int) else 0
    if args is None:
        exit_now(code)
    sys.exit(code)


def exit_now(code: int) -> NoReturn:
    """End this process with ``code`` as a normal exit does, minus the teardown of every module and object.

    With torch loaded that teardown takes ~0.45 s (measured on the 2-core machine of benchmarks/README.md), which
    `fabric run` would add to every job after its processes ended. What a normal exit does that matters is kept:
    other non-daemon threads are joined, the ``atexit`` handlers run (logging's flush, ``weakref.finalize``,
    multiprocessing's clean-up), and standard output and error are flushed.
    """
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not current and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # the handlers a normal exit runs
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(code)
