"""``fabric env``: the bug-report text, run as a real command in a child process.

Versions come from distribution metadata, so a library the report names is never imported to read its version.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from fabric_core.cli.env_report import HIDDEN, LIBRARIES, NOT_INSTALLED, distributed_variables

SECTIONS = (
    "fabric packages",
    "system",
    "torch",
    "hardware",
    "accelerators available",
    "cluster environment",
    "environment variables",
    "libraries",
    "fabric script",
)


def fabric_env(*args: str, extra_env: dict[str, str] | None = None) -> str:
    """``python -m fabric_core.cli env ...`` in a child process with no distributed or fabric variables inherited."""
    inherited = distributed_variables(dict(os.environ))
    env = {k: v for k, v in os.environ.items() if k not in inherited and not k.startswith("PYTEST_")}
    env.update(extra_env or {})
    command = [sys.executable, "-m", "fabric_core.cli", "env", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    return result.stdout


def installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def test_markdown_report_has_every_section_and_the_versions() -> None:
    out = fabric_env()
    headings = [line[4:] for line in out.splitlines() if line.startswith("### ")]
    assert headings == list(SECTIONS)
    assert out.startswith("## fabric env\n")
    assert f"- python: {platform.python_version()}\n" in out
    assert f"- version: {torch.__version__}\n" in out
    assert f"- fabric-core: {version('fabric-core')}\n" in out
    assert f"- fabric-loggers: {version('fabric-loggers')}\n" in out
    assert f"- cpu_count: {os.cpu_count()}\n" in out
    assert "- name: LightningEnvironment\n" in out
    assert f"- cuda_devices: {torch.cuda.device_count()}\n" in out
    if torch.version.cuda is None:
        assert "- cuda: none\n" in out
        assert "- nccl: none\n" in out


def test_each_library_shows_its_version_or_not_installed() -> None:
    out = fabric_env()
    missing = [name for name in LIBRARIES if installed(name) is None]
    assert missing, "every optional library is installed: torch_xla next to a CUDA-less torch cannot be"
    for name in LIBRARIES:
        assert f"- {name}: {installed(name) or NOT_INSTALLED}\n" in out


def test_versions_come_from_metadata_without_importing(tmp_path: Path) -> None:
    # a distribution with metadata and no module: importing it would fail, reading its version must not
    info = tmp_path / "wandb-9.8.7.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wandb\nVersion: 9.8.7\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    data = json.loads(fabric_env("--json", extra_env={"PYTHONPATH": path}))
    assert data["libraries"]["wandb"] == "9.8.7"


def test_distributed_variables_are_shown_and_credentials_hidden() -> None:
    variables = {
        "MASTER_ADDR": "10.1.2.3",
        "MASTER_PORT": "29511",
        "RANK": "3",
        "LOCAL_RANK": "1",
        "GROUP_RANK": "1",
        "WORLD_SIZE": "4",
        "LOCAL_WORLD_SIZE": "2",
        "NCCL_SOCKET_IFNAME": "eth7",
        "FABRIC_STRATEGY": "ddp",
        "FABRIC_UPLOAD_TOKEN": "s3cr3t-value",
        "WANDB_API_KEY": "an-unrelated-secret",
        "SOME_UNRELATED_VARIABLE": "unrelated-value",
    }
    out = fabric_env(extra_env=variables)
    section = out.split("### environment variables\n", 1)[1].split("\n\n", 1)[0]
    expected = {k: v for k, v in variables.items() if k.startswith(("MASTER", "RANK", "LOCAL", "GROUP", "WORLD"))}
    expected |= {"NCCL_SOCKET_IFNAME": "eth7", "FABRIC_STRATEGY": "ddp", "FABRIC_UPLOAD_TOKEN": HIDDEN}
    assert section.splitlines() == [f"- {k}: {v}" for k, v in sorted(expected.items())]
    for value in ("s3cr3t-value", "an-unrelated-secret", "unrelated-value"):
        assert value not in out
    assert "- name: TorchElasticEnvironment\n" in out


def test_json_report_parses_and_matches_the_text() -> None:
    data = json.loads(fabric_env("--json", extra_env={"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1"}))
    assert [key.replace("_", " ") for key in data] == list(SECTIONS)
    assert data["fabric_packages"]["fabric-core"] == version("fabric-core")
    assert data["system"]["python"] == platform.python_version()
    assert data["system"]["cpu_count"] == os.cpu_count()
    assert data["system"]["ram_gib"] > 0
    assert data["torch"]["version"] == torch.__version__
    assert data["torch"]["cuda"] == torch.version.cuda
    assert data["accelerators_available"]["cpu"] is True
    assert data["environment_variables"] == {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1"}
    assert data["libraries"]["torch"] == version("torch")
    assert all(data["libraries"][name] == installed(name) for name in LIBRARIES)


def test_fabric_script_names_its_entry_point(tmp_path: Path) -> None:
    # a script of the shape pip writes for Lightning's `fabric`, first on PATH: the report says which one runs
    script = tmp_path / "fabric"
    script.write_text("#!/usr/bin/python\nimport sys\nfrom lightning.fabric.cli import _main\nsys.exit(_main())\n")
    script.chmod(0o755)
    data = json.loads(fabric_env("--json", extra_env={"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}))
    assert data["fabric_script"] == {"path": str(script), "runs": "lightning.fabric.cli:_main"}
    ours = Path(sys.executable).parent / "fabric"
    data = json.loads(fabric_env("--json", extra_env={"PATH": f"{ours.parent}{os.pathsep}{os.environ['PATH']}"}))
    assert data["fabric_script"] == {"path": str(ours), "runs": "fabric_core.cli:main"}
