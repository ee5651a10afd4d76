"""``fabric run``: start a script (or module) on every device of every node through torch's elastic launcher.

The choices reach ``Fabric()`` in each process through ``FABRIC_ACCELERATOR``, ``FABRIC_STRATEGY``,
``FABRIC_DEVICES``, ``FABRIC_NUM_NODES`` and ``FABRIC_PRECISION`` (only the options given on the command line are
set). The processes are started by ``torch.distributed.run`` (torchrun), so ``--max-restarts`` restarts every
process of the node when one fails, and a failing process stops the others. Unless ``OMP_NUM_THREADS`` is set, each
process gets an equal share of the node's cores.

Rendezvous. The rendezvous runs on ``--main-address:--main-port``, hosted by the node with ``--node-rank 0`` (on one
node without ``--main-port``: on a free port); on several nodes it is torchrun's ``c10d`` rendezvous, which numbers
the nodes (``GROUP_RANK``). Every attempt of the job (the first one and each restart) forms a new round of it, and
its processes get a store of their own (``fabric_core.cli.attempt_store``): ``MASTER_ADDR``/``MASTER_PORT`` point at
a store on a fresh port that the ``fabric run`` of the node with rendezvous rank 0 starts before the attempt's
processes, so restarted processes never read the addresses of the processes of a failed attempt, and no process
waits for another to start the store.

Failures on several nodes: the ``fabric run`` of node 0 hosts the rendezvous store itself and keeps it while every
node whose processes failed posts which ranks failed; each node then prints the failures of every node (or that a
node sent no report: it was lost), so the node whose processes only lost their peers still names the failed rank.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click

from fabric_core.cli.job_failures import connect_store, describe_job, exchange_reports, host_store
from fabric_core.connector import (
    ENV_ACCELERATOR,
    ENV_DEVICES,
    ENV_NUM_NODES,
    ENV_PRECISION,
    ENV_STRATEGY,
    Plan,
    resolve_plan,
)

#: the main port used for multi-node runs when --main-port is not given (single-node runs pick a free port)
DEFAULT_MULTI_NODE_PORT = 29400
#: set for torchrun unless the user set it: each attempt's processes get a fresh store (see the module docstring)
NO_SHARED_STORE_ENV = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """A validated ``fabric run`` command line."""

    target: str
    is_module: bool
    script_args: tuple[str, ...]
    processes_per_node: int
    num_nodes: int
    node_rank: int
    main_address: str
    main_port: int  # 0: any free port (one node, --main-port not given)
    max_restarts: int
    environment: dict[str, str]
    rendezvous_id: str  # the same on every node of a job


def _bad(param: str, message: str) -> click.BadParameter:
    return click.BadParameter(message, param_hint=f"'{param}'")


@click.command(
    context_settings={"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]},
    short_help="Run a script on several devices/nodes.",
)
@click.argument("script_args", nargs=-1, type=click.UNPROCESSED, metavar="SCRIPT [SCRIPT_ARGS]...")
@click.option("-m", "--module", "module", default=None, metavar="MODULE", help="Run a module (like python -m).")
@click.option("--accelerator", default=None, help="auto, cpu, cuda, gpu, mps, or any registered accelerator.")
@click.option("--strategy", default=None, help="auto, ddp, fsdp, deepspeed, ... (any registered strategy).")
@click.option("--devices", default=None, help='Devices per node: "auto", a count, -1 (all) or indices "0,1".')
# each option also takes Lightning's spelling with underscores (--num_nodes, ...), so existing job files keep working
@click.option("--num-nodes", "--num_nodes", type=click.IntRange(min=1), default=None, help="Number of machines.")
@click.option(
    "--node-rank",
    "--node_rank",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="This machine's rank; node 0 hosts the rendezvous.",
)
@click.option(
    "--main-address", "--main_address", default="127.0.0.1", show_default=True, help="Address of the node with rank 0."
)
@click.option(
    "--main-port",
    "--main_port",
    type=click.IntRange(1, 65535),
    default=None,
    help=f"Port on the main node (default: a free port on one node, {DEFAULT_MULTI_NODE_PORT} on several).",
)
@click.option("--precision", default=None, help="32-true, bf16-mixed, 16-mixed, bf16-true, 64-true, ...")
@click.option(
    "--max-restarts", type=click.IntRange(min=0), default=0, show_default=True, help="Restarts after a failure."
)
def run(script_args: tuple[str, ...], module: str | None, **options: Any) -> int:
    """Run SCRIPT (or -m MODULE) with its arguments in one process per device and node.

    Options may come before or after SCRIPT; put `--` before script arguments that share a name with an option.
    """
    config = build_run_config(script_args, module, **options)
    return launch(config)


def build_run_config(
    script_args: Sequence[str],
    module: str | None,
    *,
    accelerator: str | None,
    strategy: str | None,
    devices: str | None,
    num_nodes: int | None,
    node_rank: int,
    main_address: str,
    main_port: int | None,
    precision: str | None,
    max_restarts: int,
) -> RunConfig:
    """Validate the command line (raising ``click.BadParameter``/``UsageError``) and decide what to start."""
    nodes = 1 if num_nodes is None else num_nodes
    if node_rank >= nodes:
        raise _bad("--node-rank", f"{node_rank} is out of range for --num-nodes {nodes}: choose 0 to {nodes - 1}.")
    plan = _resolve(accelerator, strategy, devices, nodes, precision)
    target, is_module, rest = _target(script_args, module)
    if plan.accelerator in ("xla", "tpu"):
        raise _bad(
            "--accelerator",
            f"{accelerator or 'auto'!r} resolves to XLA, whose processes fabric starts itself: run the script with"
            " python and call fabric.launch() instead of using `fabric run`.",
        )
    single_process = plan.strategy == "dp"
    given = {
        ENV_ACCELERATOR: accelerator,
        ENV_STRATEGY: strategy,
        ENV_DEVICES: devices,
        ENV_NUM_NODES: None if num_nodes is None else str(num_nodes),
        ENV_PRECISION: precision,
    }
    return RunConfig(
        target=target,
        is_module=is_module,
        script_args=tuple(rest),
        processes_per_node=1 if single_process else plan.num_processes,
        num_nodes=nodes,
        node_rank=node_rank,
        main_address=main_address,
        main_port=main_port if main_port is not None else _default_port(nodes),
        max_restarts=max_restarts,
        environment={name: value for name, value in given.items() if value is not None},
        rendezvous_id=_rendezvous_id(nodes, main_port),
    )


def _target(script_args: Sequence[str], module: str | None) -> tuple[str, bool, list[str]]:
    args = list(script_args)
    if module is not None:
        if not module or module.startswith("-"):
            raise _bad("-m", f"{module!r} is not a module name; use -m package.module")
        return module, True, args
    if not args:
        raise click.UsageError("Missing SCRIPT: give the script to run (or -m MODULE).")
    script = args[0]
    if script.startswith("-"):
        raise click.UsageError(f"No such option: {script}. Run `fabric run --help` for the options.")
    if not os.path.isfile(script):
        raise _bad("SCRIPT", f"the script {script!r} does not exist (or is not a file).")
    return script, False, args[1:]


def _resolve(
    accelerator: str | None, strategy: str | None, devices: str | None, num_nodes: int, precision: str | None
) -> Plan:
    """The plan the processes will resolve to, computed here so a bad value fails before anything starts."""
    names = {"--accelerator": accelerator, "--strategy": strategy, "--devices": devices, "--precision": precision}
    try:
        return resolve_plan(
            accelerator=accelerator or "auto",
            strategy=strategy or "auto",
            devices=devices or "auto",
            num_nodes=num_nodes,
            precision=precision,
            environ={},
            interactive=False,
        )
    except (ValueError, TypeError) as err:
        message = str(err)
        param = _blamed_option(names, message)
        if param is None:
            raise click.UsageError(message) from None
        raise _bad(param, message) from None


def _blamed_option(names: dict[str, str | None], message: str) -> str | None:
    """The option whose value an error names: quoted as written (``'bf17'``) first, else anywhere in the message; when
    several values appear, the option that the message also names by word ("precision"). ``None`` when none does."""
    given = {name: str(value) for name, value in names.items() if value is not None}
    found = [name for name, value in given.items() if repr(value) in message]
    found = found or [name for name, value in given.items() if value in message]
    named = [name for name in found if name.lstrip("-") in message.lower()]
    candidates = named or found
    return candidates[0] if candidates else None


def _default_port(num_nodes: int) -> int:
    """The rendezvous port when --main-port is not given: fixed for several nodes, any free one (0) on one node."""
    return DEFAULT_MULTI_NODE_PORT if num_nodes > 1 else 0


def _rendezvous_id(num_nodes: int, main_port: int | None) -> str:
    """An id for the job's rendezvous: every node of a multi-node job derives the same one from the main port."""
    if num_nodes > 1:
        return f"fabric-run-{main_port if main_port is not None else DEFAULT_MULTI_NODE_PORT}"
    return f"fabric-run-{uuid.uuid4().hex}"


def _endpoint(address: str, port: int) -> str:
    """``address:port``, with an IPv6 address in brackets."""
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    return f"{address}:{port}"


def torchrun_arguments(config: RunConfig) -> list[str]:
    """The ``torch.distributed.run`` command line for ``config``: a ``c10d`` rendezvous hosted by node 0."""
    is_host = config.node_rank == 0
    args = [
        f"--nproc-per-node={config.processes_per_node}",
        f"--nnodes={config.num_nodes}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={_endpoint(config.main_address, config.main_port)}",
        f"--rdzv-id={config.rendezvous_id}",
        f"--rdzv-conf=is_host={str(is_host).lower()}",
        f"--max-restarts={config.max_restarts}",
    ]
    if is_host:
        # the address the processes of this node are reached at (MASTER_ADDR when it gets rendezvous rank 0)
        args.append(f"--local-addr={config.main_address}")
    if config.is_module:
        args.append("--module")
    return [*args, config.target, *config.script_args]


def launch(config: RunConfig) -> int:
    """Start the processes of this node with torch's elastic launcher; return the exit code for ``fabric run``."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, get_args_parser

    from fabric_core.cli.attempt_store import BACKEND, register_backend

    os.environ.update(config.environment)
    os.environ.setdefault(NO_SHARED_STORE_ENV, "1")
    if "OMP_NUM_THREADS" not in os.environ:
        # share the cores between the processes of this node (torchrun would pick 1 and warn about it)
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // config.processes_per_node))
    launch_config, entrypoint, entrypoint_args = config_from_args(
        get_args_parser().parse_args(torchrun_arguments(config))
    )
    # torchrun's c10d rendezvous, with each attempt's store started by this process (see fabric_core.cli.attempt_store)
    register_backend()
    launch_config.rdzv_backend = BACKEND
    # on several nodes, node 0 hosts the rendezvous store itself so that it outlives torchrun's agent: the nodes
    # exchange their failure reports there (see fabric_core.cli.job_failures)
    store = _host_rendezvous_store(config) if config.num_nodes > 1 and config.node_rank == 0 else None
    try:
        elastic_launch(launch_config, entrypoint)(*entrypoint_args)
    except ChildFailedError as err:
        _report_failure(config, store, _describe_failures(err))
        _, first = err.get_first_failure()
        return first.exitcode if isinstance(first.exitcode, int) and first.exitcode > 0 else 1
    except RendezvousError as err:
        click.echo(f"fabric run: {_describe_rendezvous_error(config, err)}", err=True)
        return 1
    return 0


def _describe_rendezvous_error(config: RunConfig, err: Exception) -> str:
    """Why the rendezvous failed (torch's message says little more than that), naming the node that hosts it."""
    cause = f" ({type(err.__cause__).__name__}: {err.__cause__})" if err.__cause__ is not None else ""
    where = f"the rendezvous on {_endpoint(config.main_address, config.main_port)}"
    if config.num_nodes > 1 and config.node_rank != 0:
        where += (
            ", hosted by node 0 (--node-rank 0), failed: node 0 was lost (its `fabric run` was killed or its machine is"
            " gone) or cannot be reached at --main-address/--main-port"
        )
    else:
        where += " failed"
    return f"{where}; every process of this node was stopped. {type(err).__name__}: {err}{cause}"


def _host_rendezvous_store(config: RunConfig) -> Any:
    try:
        return host_store(config.main_address, config.main_port)
    except (RuntimeError, OSError) as err:
        raise click.ClickException(
            f"cannot host the rendezvous on {_endpoint(config.main_address, config.main_port)} (--main-address,"
            f" --main-port): {err}. Choose a free --main-port (the same on every node)."
        ) from None


def _report_failure(config: RunConfig, store: Any, failures: list[str]) -> None:
    """Print which processes failed: those of this node, or on several nodes those of every node."""
    if config.num_nodes == 1:
        click.echo(f"fabric run: {'; '.join(failures)}; every process of the run was stopped.", err=True)
        return
    if store is None:
        store = connect_store(config.main_address, config.main_port)
    reports = None if store is None else exchange_reports(store, config.node_rank, config.num_nodes, failures)
    click.echo(
        f"fabric run: the job failed (this is node {config.node_rank}; every process of this node was stopped):\n"
        f"{describe_job(reports, config.num_nodes)}",
        err=True,
    )


def _describe_failures(err: Any) -> list[str]:
    """Every failed process, the first one observed first (each printed its own traceback above)."""
    first_rank, _ = err.get_first_failure()
    ranks = sorted(err.failures, key=lambda rank: (rank != first_rank, rank))
    parts = []
    for rank in ranks:
        failure = err.failures[rank]
        parts.append(
            f"rank {rank} (local rank {failure.local_rank}, pid {failure.pid}) failed with exit code {failure.exitcode}"
        )
    return parts
