"""``fabric env``: what a bug report needs -- versions, hardware, the detected cluster environment, fabric packages."""

from __future__ import annotations

import json
import platform
import sys
from importlib.metadata import distributions
from typing import Any

import click


def collect_environment() -> dict[str, Any]:
    """Versions, detected hardware, the cluster environment and the installed fabric distributions."""
    import torch

    from fabric_accelerators import ACCELERATOR_REGISTRY
    from fabric_environments import detect_environment
    from fabric_utils import cpu_count, cuda_device_count, mps_available, xla_available, xla_device_count

    cuda_count = cuda_device_count()
    hardware: dict[str, Any] = {
        "cpu_count": cpu_count(),
        "cuda_devices": cuda_count,
        "cuda_device_names": [torch.cuda.get_device_name(i) for i in range(cuda_count)] if cuda_count else [],
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
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "hardware": hardware,
        "accelerators_available": accelerators,
        "cluster_environment": {
            "name": type(environment).__name__,
            "creates_processes_externally": environment.creates_processes_externally,
            "world_size": _safe(environment.world_size, None),
            "global_rank": _safe(environment.global_rank, None),
        },
        "fabric_packages": _fabric_distributions(),
    }


def _safe(function: Any, default: Any) -> Any:
    try:
        return function()
    except Exception:
        return default


def _fabric_distributions() -> dict[str, str]:
    found = {}
    for dist in distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith("fabric-"):
            found[name] = dist.version
    return dict(sorted(found.items()))


def _lines(data: dict[str, Any], indent: str = "") -> list[str]:
    lines = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines.extend(_lines(value, indent + "  ") if value else [f"{indent}  (none)"])
        else:
            lines.append(f"{indent}{key}: {value}")
    return lines


@click.command(short_help="Print versions, hardware and the cluster environment.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def env(as_json: bool) -> None:
    """Print what a bug report needs: versions, detected hardware, cluster environment, fabric packages."""
    data = collect_environment()
    click.echo(json.dumps(data, indent=2) if as_json else "\n".join(_lines(data)))
