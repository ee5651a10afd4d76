from __future__ import annotations

import pytest

from fabric_environments import KubeflowEnvironment


@pytest.fixture
def pod_env(monkeypatch: pytest.MonkeyPatch) -> KubeflowEnvironment:
    for name, value in {"MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "3", "RANK": "2"}.items():
        monkeypatch.setenv(name, value)
    return KubeflowEnvironment()


def test_values_of_a_pytorchjob_pod(pod_env: KubeflowEnvironment) -> None:
    assert pod_env.creates_processes_externally
    assert (pod_env.main_address, pod_env.main_port) == ("job-master-0", 23456)
    assert (pod_env.world_size(), pod_env.global_rank(), pod_env.local_rank(), pod_env.node_rank()) == (3, 2, 0, 2)


def test_never_detected(pod_env: KubeflowEnvironment) -> None:
    assert KubeflowEnvironment.detect() is False


def test_missing_variables_raise_naming_them(monkeypatch: pytest.MonkeyPatch) -> None:
    env = KubeflowEnvironment()
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        env.main_address  # noqa: B018
    with pytest.raises(ValueError, match="MASTER_PORT"):
        env.main_port  # noqa: B018
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        env.world_size()
    with pytest.raises(ValueError, match="RANK"):
        env.node_rank()


def test_validate_settings(pod_env: KubeflowEnvironment) -> None:
    pod_env.validate_settings(num_devices=1, num_nodes=3)
    with pytest.raises(ValueError, match="devices=1 and num_nodes=3"):
        pod_env.validate_settings(num_devices=2, num_nodes=3)
