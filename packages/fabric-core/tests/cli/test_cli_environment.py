"""``fabric env``: versions, hardware, the detected cluster environment and the installed fabric packages."""

from __future__ import annotations

import json
import platform
from importlib.metadata import version

import pytest
import torch

from fabric_core.cli import main


def run_env(*args: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(["env", *args])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_text_report(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_env(capsys=capsys)
    assert f"python: {platform.python_version()}" in out
    assert f"torch: {torch.__version__}" in out
    assert f"fabric-core: {version('fabric-core')}" in out
    assert "fabric-utils:" in out
    assert "cluster_environment:" in out
    assert "name: LightningEnvironment" in out
    assert "cuda_devices: 0" in out


def test_json_report_sees_torchrun_variables(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {"RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("WORLD_SIZE", "4")
    data = json.loads(run_env("--json", capsys=capsys))
    assert data["cluster_environment"] == {
        "name": "TorchElasticEnvironment",
        "creates_processes_externally": True,
        "world_size": 4,
        "global_rank": 3,
    }
    assert data["accelerators_available"]["cpu"] is True
    assert data["fabric_packages"]["fabric-core"] == version("fabric-core")
