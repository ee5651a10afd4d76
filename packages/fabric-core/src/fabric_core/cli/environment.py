"""``fabric env``: a report to paste into a bug report -- fabric's packages, the machine, torch's CUDA build, hardware,
the detected cluster environment, the distributed environment variables and every optional library's version."""

from __future__ import annotations

import json
from typing import Any

import click

from fabric_core.cli.env_report import (
    distributed_variables,
    fabric_distributions,
    fabric_script,
    library_versions,
    render_markdown,
    system_facts,
    torch_build,
)


def collect_environment() -> dict[str, Any]:
    """Everything ``fabric env`` reports, as plain JSON-ready data (``None`` where a thing is absent)."""
    import torch

    from fabric_accelerators import ACCELERATOR_REGISTRY
    from fabric_environments import detect_environment
    from fabric_utils import cuda_device_count, mps_available, xla_available, xla_device_count

    cuda_count = cuda_device_count()
    hardware: dict[str, Any] = {
        "cuda_devices": cuda_count,
        "cuda_device_details": [_cuda_device(torch.cuda.get_device_properties(i)) for i in range(cuda_count)],
        "mps_available": mps_available(),
        "xla_available": xla_available(),
        "xla_devices": _safe(xla_device_count, 0) if xla_available() else 0,
    }
    accelerators = {}
    for name in ACCELERATOR_REGISTRY:
        cls = ACCELERATOR_REGISTRY.get(name)
        accelerators[name] = bool(_safe(getattr(cls, "is_available", lambda: False), False))
    environment = detect_environment()
    return {
        "fabric_packages": fabric_distributions(),
        "system": system_facts(),
        "torch": torch_build(),
        "hardware": hardware,
        "accelerators_available": accelerators,
        "cluster_environment": {
            "name": type(environment).__name__,
            "creates_processes_externally": environment.creates_processes_externally,
            "world_size": _safe(environment.world_size, None),
            "global_rank": _safe(environment.global_rank, None),
        },
        "environment_variables": distributed_variables(),
        "libraries": library_versions(),
        "fabric_script": fabric_script(),
    }


def _cuda_device(properties: Any) -> str:
    memory = properties.total_memory / 2**30
    return f"{properties.name} (compute {properties.major}.{properties.minor}, {memory:.1f} GiB)"


def _safe(function: Any, default: Any) -> Any:
    try:
        return function()
    except Exception:
        return default


@click.command(short_help="Print a report for bug reports: versions, machine, hardware, distributed settings.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of Markdown.")
def env(as_json: bool) -> None:
    """Print what a bug report needs, as Markdown to paste into an issue (or JSON with --json).

    It lists the fabric packages, Python, the OS, CPUs and RAM, torch's CUDA/cuDNN/NCCL build, the devices, the
    detected cluster environment, the distributed environment variables that are set, the version of every optional
    library fabric can use ("not installed" where absent) and which package the `fabric` script on PATH belongs to.
    """
    data = collect_environment()
    click.echo(json.dumps(data, indent=2) if as_json else render_markdown(data), nl=as_json)
