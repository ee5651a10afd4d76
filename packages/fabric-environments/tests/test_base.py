from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

from fabric_environments import (
    ClusterEnvironment,
    KubeflowEnvironment,
    LightningEnvironment,
    LSFEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)


def test_the_base_is_abstract() -> None:
    with pytest.raises(TypeError, match="abstract"):
        ClusterEnvironment()  # type: ignore[abstract]


class Fixed(ClusterEnvironment):
    creates_processes_externally = True  # type: ignore[assignment]
    main_address = "10.0.0.1"  # type: ignore[assignment]
    main_port = 1234  # type: ignore[assignment]

    @staticmethod
    def detect() -> bool:
        return False

    def world_size(self) -> int:
        return 2

    def set_world_size(self, size: int) -> None:
        raise AssertionError("not called")

    def global_rank(self) -> int:
        return 1

    def set_global_rank(self, rank: int) -> None:
        raise AssertionError("not called")

    def local_rank(self) -> int:
        return 1

    def node_rank(self) -> int:
        return 0


def test_a_minimal_subclass_gets_the_defaults() -> None:
    env = Fixed()
    env.validate_settings(num_devices=2, num_nodes=1)  # the default accepts any request
    env.validate_ranks()  # rank 1 of 2: consistent
    env.teardown()
    assert repr(env) == "Fixed()"
    assert (env.name, env.detection_priority) == ("", 0)
    assert env.preemption_signals() == ()  # no scheduler warns of the end of the job by default


def test_the_default_rank_check_of_a_subclass() -> None:
    """A custom environment gets ``validate_ranks`` too: the rank against the world size, no negative rank."""

    class PastTheWorld(Fixed):
        def global_rank(self) -> int:
            return 2

    class NegativeNode(Fixed):
        def node_rank(self) -> int:
            return -1

    with pytest.raises(ValueError, match=re.escape("global_rank()=2 must satisfy 0 <= global_rank() < world_size()=2")):
        PastTheWorld().validate_ranks()
    with pytest.raises(ValueError, match=re.escape("NegativeNode reads inconsistent ranks from the environment:")):
        NegativeNode().validate_ranks()


@pytest.fixture
def every_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The variables of every launcher at once, MASTER_ADDR/MASTER_PORT excepted (environments must not add them)."""
    rankfile = tmp_path / "rankfile"
    rankfile.write_text(f"launch\n{socket.gethostname()}\n")
    for name, value in {
        "WORLD_SIZE": "2",
        "RANK": "1",
        "LOCAL_RANK": "1",
        "GROUP_RANK": "0",
        "LOCAL_WORLD_SIZE": "2",
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "0",
        "SLURM_JOB_ID": "77",
        "SLURM_NODELIST": "node[1-2]",
        "LSB_JOBID": "77",
        "LSB_DJOB_RANKFILE": str(rankfile),
        "JSM_NAMESPACE_SIZE": "2",
        "JSM_NAMESPACE_RANK": "1",
        "JSM_NAMESPACE_LOCAL_RANK": "1",
    }.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize(
    "cls", [LightningEnvironment, TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, KubeflowEnvironment]
)
@pytest.mark.usefixtures("every_variable")
def test_no_environment_writes_os_environ(cls: type[ClusterEnvironment]) -> None:
    before = dict(os.environ)
    env = cls()
    cls.detect()
    env.creates_processes_externally  # noqa: B018
    for read in (lambda: env.main_address, lambda: env.main_port):
        try:
            read()
        except ValueError:  # Kubeflow and TorchElastic need MASTER_ADDR/MASTER_PORT: an error, not a default written
            assert cls in (KubeflowEnvironment, TorchElasticEnvironment)
    for method in (env.world_size, env.global_rank, env.local_rank, env.node_rank):
        method()
    env.validate_settings(num_devices=2, num_nodes=1)
    env.teardown()
    assert dict(os.environ) == before
