"""The machine-level parts of ``fabric env``: library versions, the machine, torch's CUDA build, the distributed
environment variables, the ``fabric`` script, and the Markdown rendering of the whole report.

Versions come from the installed distributions' metadata, so an optional library is never imported to report it.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from importlib.metadata import PackageNotFoundError, distributions, version
from pathlib import Path
from typing import Any

from fabric_utils import cpu_count

# distributions whose versions a bug report needs: fabric's own dependencies, then every optional library it can use
LIBRARIES = (
    "torch",
    "numpy",
    "click",
    "fsspec",
    "pyyaml",
    "packaging",
    "typing_extensions",
    "tqdm",
    "rich",
    "s3fs",
    "tensorboard",
    "tensorboardX",
    "mlflow",
    "mlflow-skinny",
    "wandb",
    "deepspeed",
    "transformers",
    "accelerate",
    "lightning",
    "libcst",
    "bitsandbytes",
    "transformer_engine",
    "torch_xla",
    "mpi4py",
    "triton",
)
NOT_INSTALLED = "not installed"

# variables that decide how processes find each other, which devices they see and how they talk
DISTRIBUTED_VARIABLES = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "CUDA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "TORCH_DISTRIBUTED_DEBUG",
)
DISTRIBUTED_PREFIXES = (
    "FABRIC_",
    "TORCHELASTIC_",
    "TORCH_NCCL_",
    "NCCL_",
    "GLOO_",
    "SLURM_",
    "OMPI_COMM_WORLD_",
    "PMI_",
    "LSB_",
    "JSM_NAMESPACE_",
    "PET_",
    "PJRT_",
    "TPU_",
    "XLA_",
)
# a variable of those families whose name says it holds a credential is listed with its value hidden
SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")
HIDDEN = "(set, value hidden)"


def library_versions() -> dict[str, str | None]:
    """Installed version of each of ``LIBRARIES``, ``None`` where it is not installed (read from metadata only)."""
    return {name: _version(name) for name in LIBRARIES}


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def fabric_distributions() -> dict[str, str]:
    """Every installed ``fabric-*`` distribution and its version, by name."""
    found = {}
    for dist in distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith("fabric-"):
            found[name] = dist.version
    return dict(sorted(found.items()))


def system_facts() -> dict[str, Any]:
    """Python, the operating system, CPU counts and the machine's RAM."""
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "os": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": cpu_count(),
        "ram_gib": _ram_gib(),
    }


def _ram_gib() -> float | None:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name (macOS has it)
        return None
    return round(total / 2**30, 1)


def torch_build() -> dict[str, Any]:
    """torch's version and the CUDA/cuDNN/NCCL/ROCm it was built with; ``None`` where the build has none."""
    import torch

    cuda = torch.version.cuda
    return {
        "version": torch.__version__,
        "cuda": cuda,
        "cudnn": _call(torch.backends.cudnn.version) if cuda else None,
        "nccl": _nccl_version() if cuda else None,
        "hip": getattr(torch.version, "hip", None),
        "nvidia_driver": _nvidia_driver(),
    }


def _nccl_version() -> str | None:
    import torch

    found = _call(torch.cuda.nccl.version)
    if isinstance(found, tuple):
        return ".".join(str(part) for part in found)
    return None if found is None else str(found)


def _nvidia_driver() -> str | None:
    """The loaded NVIDIA kernel driver's version (Linux), without starting CUDA or running nvidia-smi."""
    try:
        first = Path("/proc/driver/nvidia/version").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    words = first.split()
    numbers = [word for word in words if word[:1].isdigit() and "." in word]
    return numbers[0] if numbers else first.strip()


def _call(function: Any) -> Any:
    try:
        return function()
    except Exception:
        return None


def distributed_variables(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The set environment variables that steer a distributed run, sorted by name; credentials show as hidden."""
    environ = dict(os.environ) if environ is None else environ
    found = {}
    for name, value in environ.items():
        if name in DISTRIBUTED_VARIABLES or name.startswith(DISTRIBUTED_PREFIXES):
            found[name] = HIDDEN if any(word in name for word in SECRET_WORDS) else value
    return dict(sorted(found.items()))


def fabric_script() -> dict[str, str | None]:
    """Which ``fabric`` executable the shell finds first and which package's entry point it runs.

    Lightning installs a script named ``fabric`` too; whichever package was installed last owns the file.
    """
    where = shutil.which("fabric")
    return {"path": where, "runs": _script_target(Path(where)) if where else None}


def _script_target(script: Path) -> str | None:
    try:
        text = script.read_text(errors="replace")[:4096]
    except OSError:
        return None
    for line in text.splitlines():  # pip and uv write `from package.module import function`
        words = line.split()
        if len(words) >= 4 and words[0] == "from" and words[2] == "import":
            return f"{words[1]}:{words[3]}"
    return None


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: one ``###`` section per top-level key, one ``- key: value`` line per entry.

    An empty value reads "none", except in the ``libraries`` section, where it reads "not installed".
    """
    lines = ["## fabric env", ""]
    for section, content in report.items():
        missing = NOT_INSTALLED if section == "libraries" else "none"
        lines.append(f"### {section.replace('_', ' ')}")
        if isinstance(content, dict):
            lines.extend(_entries(content, "", missing) if content else ["- (none)"])
        else:
            lines.append(f"- {_text(content, missing)}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _entries(data: dict[str, Any], indent: str, missing: str) -> list[str]:
    lines = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"{indent}- {key}:")
            lines.extend(_entries(value, indent + "  ", missing) if value else [f"{indent}  - (none)"])
        else:
            lines.append(f"{indent}- {key}: {_text(value, missing)}")
    return lines


def _text(value: Any, missing: str) -> str:
    if value is None or value == [] or value == ():
        return missing
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    return str(value)
