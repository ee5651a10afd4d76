from __future__ import annotations

import logging
import os
import socket
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric_environments import (
    ENVIRONMENT_REGISTRY,
    ClusterEnvironment,
    LightningEnvironment,
    detect_environment,
    detection_order,
)
from fabric_environments.registry import _build_registry
from fabric_utils import MPI4PY, UnknownNameError, override_hardware

TORCHRUN = {"RANK": "0", "GROUP_RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "WORLD_SIZE": "1"}
SRUN = {"SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NAME": "job"}
JSRUN = {"LSB_JOBID": "1", "LSB_MCPU_HOSTS": f"{socket.gethostname()} 2", "JSM_NAMESPACE_SIZE": "2",
         "JSM_NAMESPACE_LOCAL_RANK": "0", "JSM_NAMESPACE_RANK": "0"}  # fmt: skip
MPIRUN = {"OMPI_COMM_WORLD_SIZE": "2"}
KUBEFLOW = {"MASTER_ADDR": "master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "2", "RANK": "1"}


def _set(monkeypatch: pytest.MonkeyPatch, *groups: dict[str, str]) -> None:
    for group in groups:
        for name, value in group.items():
            monkeypatch.setenv(name, value)


def test_registered_names() -> None:
    assert list(ENVIRONMENT_REGISTRY) == [
        "kubeflow", "lightning", "local", "lsf", "mpi", "slurm", "torchelastic", "xla",
    ]  # fmt: skip
    assert ENVIRONMENT_REGISTRY.entry_point_group == "fabric.environments"
    assert isinstance(ENVIRONMENT_REGISTRY.create("local"), LightningEnvironment)


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(UnknownNameError, match=r"Unknown cluster environment 'slurmm'. Choose one of: kubeflow, .*xla"):
        ENVIRONMENT_REGISTRY.create("slurmm")


def test_detection_order() -> None:
    assert detection_order() == ["torchelastic", "slurm", "lsf", "mpi", "xla", "kubeflow", "lightning"]


def test_local_default() -> None:
    assert type(detect_environment()) is LightningEnvironment


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ((SRUN,), "SLURMEnvironment"),
        ((SRUN, TORCHRUN), "TorchElasticEnvironment"),  # torchrun inside an allocation owns the processes
        ((JSRUN,), "LSFEnvironment"),
        ((JSRUN, SRUN), "SLURMEnvironment"),
        ((KUBEFLOW,), "LightningEnvironment"),  # Kubeflow is chosen explicitly, never detected
        (({**SRUN, "SLURM_JOB_NAME": "interactive"},), "LightningEnvironment"),
    ],
)
def test_detection(monkeypatch: pytest.MonkeyPatch, groups: tuple[dict[str, str], ...], expected: str) -> None:
    _set(monkeypatch, *groups)
    assert type(detect_environment()).__name__ == expected


@pytest.mark.skipif(not MPI4PY.available, reason="needs mpi4py")
def test_mpi_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, MPIRUN)
    assert type(detect_environment()).__name__ == "MPIEnvironment"
    _set(monkeypatch, JSRUN)
    assert type(detect_environment()).__name__ == "LSFEnvironment"


def test_xla_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJRT_DEVICE", "TPU")
    with override_hardware(xla_available=True):
        assert type(detect_environment()).__name__ == "XLAEnvironment"
        _set(monkeypatch, SRUN)
        assert type(detect_environment()).__name__ == "SLURMEnvironment"


class _Custom(LightningEnvironment):
    """A third-party environment that detects itself when FABRIC_TEST_CUSTOM is set."""

    name = "custom"
    detection_priority = 10_000

    @staticmethod
    def detect() -> bool:
        return "FABRIC_TEST_CUSTOM" in os.environ


class _Broken(LightningEnvironment):
    detection_priority = 20_000

    @staticmethod
    def detect() -> bool:
        raise RuntimeError("broken plugin")


@pytest.fixture
def registered() -> Iterator[None]:
    ENVIRONMENT_REGISTRY.register("custom", _Custom)
    ENVIRONMENT_REGISTRY.register("broken", _Broken)
    try:
        yield
    finally:
        ENVIRONMENT_REGISTRY.remove("custom")
        ENVIRONMENT_REGISTRY.remove("broken")


@pytest.mark.usefixtures("registered")
def test_registered_environments_join_detection(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert detection_order()[:2] == ["broken", "custom"]
    _set(monkeypatch, SRUN)
    with caplog.at_level(logging.WARNING):
        assert type(detect_environment()).__name__ == "SLURMEnvironment"
    assert "broken plugin" in caplog.text  # a raising detect() counts as False and is reported
    monkeypatch.setenv("FABRIC_TEST_CUSTOM", "1")
    assert type(detect_environment()) is _Custom


def test_entry_point_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution that declares a ``fabric.environments`` entry point adds its environment by name."""
    (tmp_path / "fabric_test_env_plugin.py").write_text(
        textwrap.dedent(
            """
            from fabric_environments import LightningEnvironment

            class PluginEnvironment(LightningEnvironment):
                detection_priority = 10_000

                @staticmethod
                def detect():
                    return True

            def register(registry):
                registry.register("plugin", PluginEnvironment)
            """
        )
    )
    dist_info = tmp_path / "fabric_test_env_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fabric-test-env-plugin\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[fabric.environments]\nplugin = fabric_test_env_plugin:register\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        registry = _build_registry()
        assert "plugin" in registry
        assert detection_order(registry)[0] == "plugin"
        env = detect_environment(registry)
    finally:
        sys.modules.pop("fabric_test_env_plugin", None)
    assert type(env).__name__ == "PluginEnvironment"
    assert isinstance(env, ClusterEnvironment)
