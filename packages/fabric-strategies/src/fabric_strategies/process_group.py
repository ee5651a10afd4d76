"""Creating the default process group of a run from its cluster environment."""

from __future__ import annotations

from datetime import timedelta

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


def default_process_group_backend(device: torch.device) -> str:
    """The backend for processes on ``device``: nccl for CUDA, gloo for everything else."""
    return _BACKENDS_BY_DEVICE.get(device.type, "gloo")


def check_backend(backend: str) -> str:
    """Validate a backend name (``gloo``, ``nccl``, ... or a ``"cpu:gloo,cuda:nccl"`` mapping); return it lowercased."""
    known = [name for name in dist.Backend.backend_list if name != "undefined"]
    if isinstance(backend, str) and (backend.lower() in known or ":" in backend):
        return backend.lower()
    raise ValueError(f"Unknown process_group_backend {backend!r}. Choose one of: {', '.join(known)}")


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
    register_exit_teardown()
    report_failures_to_parent(environment.local_rank())  # only in a child of SubprocessScriptLauncher
    return True
