"""``fabric consolidate``: one ``torch.save`` file from a sharded (FSDP / ModelParallel) checkpoint directory."""

from __future__ import annotations

import click

from fabric_core.consolidate import UnsafeCheckpointError, consolidate_checkpoint


@click.command(short_help="Turn a sharded checkpoint directory into one file.")
@click.argument("checkpoint_dir", metavar="CHECKPOINT_DIR")
@click.option(
    "--output-file",
    default=None,
    metavar="FILE",
    help="Where to write the file (default: CHECKPOINT_DIR.consolidated).",
)
def consolidate(checkpoint_dir: str, output_file: str | None) -> None:
    """Convert the sharded checkpoint CHECKPOINT_DIR into one file that torch.load(weights_only=True) reads."""
    try:
        written = consolidate_checkpoint(checkpoint_dir, output_file)
    except FileNotFoundError as err:
        raise click.BadParameter(str(err), param_hint="'CHECKPOINT_DIR'") from None
    except UnsafeCheckpointError as err:
        raise click.ClickException(str(err)) from None
    except ValueError as err:
        hint = "'--output-file'" if output_file is not None and output_file in str(err) else "'CHECKPOINT_DIR'"
        raise click.BadParameter(str(err), param_hint=hint) from None
    click.echo(f"Consolidated {checkpoint_dir} into {written}")
