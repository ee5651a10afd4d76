"""``fabric consolidate``: one ``torch.save`` file from a sharded (FSDP / ModelParallel) or DeepSpeed checkpoint.

The work is ``fabric_strategies.consolidate_sharded_checkpoint`` with its default ``weights_only=True``: nothing in
the checkpoint is unpickled beyond tensors, checkpoint metadata and plain data (and DeepSpeed's records). This module
turns its errors into command-line errors: a bad directory or output path exits with code 2 and one line; a refused
checkpoint, or DeepSpeed missing for a DeepSpeed checkpoint, with 1.
"""

from __future__ import annotations

import click

from fabric_strategies import UnsafeCheckpointError, consolidate_sharded_checkpoint
from fabric_utils import MissingDependencyError

_NO_OPT_OUT = (
    " The command line has no such option: for a checkpoint you trust, call"
    " fabric_strategies.consolidate_sharded_checkpoint(path, weights_only=False) from Python."
)


@click.command(short_help="Turn a sharded or DeepSpeed checkpoint directory into one file.")
@click.argument("checkpoint_dir", metavar="CHECKPOINT_DIR")
@click.option(
    "--output-file",
    "--output_file",  # Lightning's spelling
    default=None,
    metavar="FILE",
    help="Where to write the file (default: CHECKPOINT_DIR.consolidated).",
)
def consolidate(checkpoint_dir: str, output_file: str | None) -> None:
    """Convert the sharded checkpoint CHECKPOINT_DIR into one file that torch.load(weights_only=True) reads.

    CHECKPOINT_DIR is a directory that fabric.save wrote with FSDP or ModelParallel (everything it holds), or with
    DeepSpeed (the full fp32 weights and the plain entries; not the optimizer state).
    """
    try:
        written = consolidate_sharded_checkpoint(checkpoint_dir, output_file)
    except FileNotFoundError as err:
        raise click.BadParameter(str(err), param_hint="'CHECKPOINT_DIR'") from None
    except UnsafeCheckpointError as err:
        raise click.ClickException(f"{err}{_NO_OPT_OUT}") from None
    except MissingDependencyError as err:
        raise click.ClickException(str(err)) from None
    except (ValueError, RuntimeError, OSError) as err:  # a corrupt or unreadable checkpoint, or a bad output path
        hint = "'--output-file'" if output_file is not None and output_file in str(err) else "'CHECKPOINT_DIR'"
        raise click.BadParameter(str(err), param_hint=hint) from None
    click.echo(f"Consolidated {checkpoint_dir} into {written}")
