"""The ``fabric migrate`` command: the table and the walk of ``migrate``, the rewriting of ``migrate_codemod``.

Exit codes: 0 when nothing needs changing or ``--write`` wrote the changes; 1 when the diff shows changes that were not
written, or when a file could not be read or parsed (it is named and skipped); 2 for usage errors and when libcst is
not installed.
"""

from __future__ import annotations

import click

from fabric_core.cli.migrate import LIBCST, NameTable, python_files


class _MissingLibcst(click.ClickException):
    exit_code = 2  # the command cannot run as installed


@click.command(short_help="Rewrite Lightning Fabric imports to fabric's packages.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True), metavar="PATH...")
@click.option("--write", is_flag=True, help="Rewrite the files in place instead of printing a diff.")
def migrate(paths: tuple[str, ...], write: bool) -> None:
    """Rewrite the lightning.fabric / lightning_fabric imports and qualified names in each PATH (a file, or a
    directory searched for *.py files) to fabric's packages.

    Prints a unified diff by default; --write rewrites the files. Names with no counterpart are listed on stderr
    with the closest name that exists. Exit code: 0 nothing to change or changes written, 1 changes shown but not
    written or a file skipped, 2 usage error.
    """
    try:
        LIBCST.require("fabric migrate")
    except ModuleNotFoundError as err:
        raise _MissingLibcst(str(err)) from None
    from fabric_core.cli.migrate_codemod import migrate_source

    table = NameTable.from_installed()
    pending = skipped = False
    for path in python_files(paths):
        try:
            source = path.read_bytes()
            result = migrate_source(source, str(path), table)
        except (OSError, SyntaxError) as err:
            click.echo(f"{path}: skipped: {err}", err=True)
            skipped = True
            continue
        for unmapped in result.unmapped:
            click.echo(str(unmapped), err=True)
        if result.code == source:
            continue
        if write:
            path.write_bytes(result.code)
            click.echo(f"rewrote {path}", err=True)
        else:
            click.echo(result.diff, nl=False)
            pending = True
    if pending or skipped:
        click.get_current_context().exit(1)
