"""Creating the default process group of a run from its cluster environment."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

from fabric_environments import ClusterEnvironment
from fabric_strategies.collectives.torch_collective import tcp_init_method
from fabric_strategies.launchers.child_watch import report_failures_to_parent
from fabric_strategies.teardown import register_exit_teardown

#: torch's default (30 minutes); tests and impatient users pass a shorter ``timeout`` to the strategy
DEFAULT_TIMEOUT: timedelta = default_pg_timeout

_BACKENDS_BY_DEVICE = {"cuda": "nccl"}
#: torch's variable (torchrun sets it too): when it is "True", ``init_process_group`` connects to the store at the main
#: address and port as a client instead of hosting it in the process of rank 0
AGENT_STORE_VARIABLE = "TORCHELASTIC_USE_AGENT_STORE"


def default_process_group_backend(device: torch.device) -> str:
    """The backend for processes on ``device``: nccl for CUDA, gloo for everything else."""
    return _BACKENDS_BY_DEVICE.get(device.type, "gloo")


def check_backend(backend: str) -> str:
    """Validate a backend name (``gloo``, ``nccl``, ... or a ``"cpu:gloo,cuda:nccl"`` mapping); return it lowercased."""
    known = [name for name in dist.Backend.backend_list if name != "undefined"]
    if isinstance(backend, str) and (backend.lower() in known or ":" in backend):
        return backend.lower()
    raise ValueError(f"Unknown process_group_backend {backend!r}. Choose one of: {', '.join(known)}")


def start_store_server(
    address: str, port: int = 0, *, timeout: timedelta = DEFAULT_TIMEOUT, multi_tenant: bool = False
) -> Any:
    """A TCPStore server at ``address:port`` (port 0: a free one, which the store's ``port`` tells), not waiting for
    clients. Raises what TCPStore raises (``RuntimeError``, ``OSError``): each caller says whose store failed."""
    return dist.TCPStore(
        address, port, is_master=True, wait_for_workers=False, timeout=timeout, multi_tenant=multi_tenant
    )


def host_store(environment: ClusterEnvironment) -> Any:
    """Start the store (a TCPStore server) through which the processes of ``environment`` form their group.

    For a launcher that starts them: it keeps the returned object until they have ended, and gives them
    ``AGENT_STORE_VARIABLE="True"``. ``None`` where ``torch.distributed`` is not available.
    """
    if not dist.is_available():
        return None
    address, port = environment.main_address, environment.main_port
    try:
        return start_store_server(address, port)
    except (RuntimeError, OSError) as err:
        raise RuntimeError(
            f"Cannot start the store of the process group at {address}:{port} (MASTER_ADDR:MASTER_PORT): {err}."
            " Set MASTER_PORT to a free port, or leave it unset to get one."
        ) from err


def init_process_group(
    environment: ClusterEnvironment, backend: str, timeout: timedelta = DEFAULT_TIMEOUT, **kwargs: object
) -> bool:
    """Join the default process group described by ``environment`` (TCP rendezvous at its main address and port).

    Returns whether a group was created: when one already exists (created by the user or a test harness) it is used
    as is. A created group is destroyed cleanly at interpreter exit if nobody tears it down earlier.
    """
    if not dist.is_available():
        raise RuntimeError(
            "torch.distributed is not available in this build of PyTorch; it is needed to run in parallel"
        )
    if dist.is_initialized():
        return False
    if not isinstance(timeout, timedelta):
        raise TypeError(f"timeout must be a datetime.timedelta, got {timeout!r}")
    dist.init_process_group(
        backend,
        init_method=tcp_init_method(environment.main_address, environment.main_port),
        rank=environment.global_rank(),
        world_size=environment.world_size(),
        timeout=timeout,
        **kwargs,  # type: ignore[arg-type]
    )
    if dist.get_backend() == "gloo":
        # every process has finished connecting before any goes on: one that tore its group down at once (a function
        # that returns right after joining) would otherwise break the connection of a peer still forming it ("Gloo
        # connectFullMesh failed ... Connection closed by peer"). NCCL connects at the first collective instead.
        dist.barrier()
    register_exit_teardown()
    report_failures_to_parent(environment.local_rank())  # only in a child of SubprocessScriptLauncher
    return True
