"""``validate_ranks``: every environment refuses ranks and sizes that contradict each other, naming the variables.

Each environment starts from a consistent set of real environment variables; each case changes some of them. A
rank outside its world would otherwise make the process wait in the rendezvous for ever.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from fabric_environments import ENVIRONMENT_REGISTRY, LightningEnvironment, SLURMEnvironment, TorchElasticEnvironment

CONSISTENT: dict[str, dict[str, str]] = {
    "torchelastic": {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29400",
        "WORLD_SIZE": "8",
        "RANK": "5",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
        "GROUP_RANK": "1",
        "GROUP_WORLD_SIZE": "2",
    },
    "slurm": dict(SLURM_NTASKS="8", SLURM_PROCID="5", SLURM_LOCALID="1", SLURM_NODEID="1", SLURM_NNODES="2")
    | {"SLURM_NTASKS_PER_NODE": "4", "SLURM_JOB_NAME": "train.py"},
    "lsf": {
        "LSB_JOBID": "123456",
        "JSM_NAMESPACE_SIZE": "4",
        "JSM_NAMESPACE_RANK": "3",
        "JSM_NAMESPACE_LOCAL_RANK": "1",
    },
    "kubeflow": {"MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "3", "RANK": "2"},
    "lightning": {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "NODE_RANK": "1"},
}


#: (environment, changed variables, what the message must say)
INCONSISTENT: list[tuple[str, dict[str, str], str]] = [
    ("torchelastic", {"RANK": "7", "WORLD_SIZE": "2"}, "RANK=7 must satisfy 0 <= RANK < WORLD_SIZE=2"),
    ("torchelastic", {"RANK": "-1"}, "RANK=-1 must satisfy 0 <= RANK < WORLD_SIZE=8"),
    ("torchelastic", {"LOCAL_RANK": "4"}, "LOCAL_RANK=4 must satisfy 0 <= LOCAL_RANK < LOCAL_WORLD_SIZE=4"),
    ("torchelastic", {"GROUP_RANK": "2"}, "GROUP_RANK=2 must satisfy 0 <= GROUP_RANK < GROUP_WORLD_SIZE=2"),
    ("torchelastic", {"WORLD_SIZE": "0", "RANK": "0"}, "WORLD_SIZE=0 must be at least 1"),
    ("torchelastic", {"LOCAL_WORLD_SIZE": "0"}, "LOCAL_WORLD_SIZE=0 must be at least 1"),
    ("torchelastic", {"RANK": "seven"}, "RANK='seven' must be an integer"),
    ("torchelastic", {"LOCAL_WORLD_SIZE": "2.5"}, "LOCAL_WORLD_SIZE='2.5' must be an integer"),
    ("slurm", {"SLURM_PROCID": "8"}, "SLURM_PROCID=8 must satisfy 0 <= SLURM_PROCID < SLURM_NTASKS=8"),
    ("slurm", {"SLURM_LOCALID": "4"}, "SLURM_LOCALID=4 must satisfy 0 <= SLURM_LOCALID < SLURM_NTASKS_PER_NODE=4"),
    ("slurm", {"SLURM_NODEID": "2"}, "SLURM_NODEID=2 must satisfy 0 <= SLURM_NODEID < SLURM_NNODES=2"),
    ("slurm", {"SLURM_NTASKS_PER_NODE": "4,1"}, "SLURM_LOCALID=1 must satisfy 0 <= SLURM_LOCALID < SLURM_NTASKS"),
    ("slurm", {"SLURM_NNODES": "x"}, "SLURM_NNODES='x' must be an integer"),
    ("lsf", {"JSM_NAMESPACE_RANK": "4"}, "JSM_NAMESPACE_RANK=4 must satisfy 0 <= JSM_NAMESPACE_RANK < JSM_NAMES"),
    ("lsf", {"JSM_NAMESPACE_LOCAL_RANK": "-2"}, "JSM_NAMESPACE_LOCAL_RANK=-2 must satisfy 0 <="),
    ("kubeflow", {"RANK": "3"}, "RANK=3 must satisfy 0 <= RANK < WORLD_SIZE=3"),
    ("kubeflow", {"WORLD_SIZE": "-3"}, "WORLD_SIZE=-3 must be at least 1"),
    ("lightning", {"RANK": "4"}, "RANK=4 must satisfy 0 <= RANK < WORLD_SIZE=4"),
    ("lightning", {"RANK": "", "GLOBAL_RANK": "9"}, "GLOBAL_RANK=9 must satisfy 0 <= GLOBAL_RANK < WORLD_SIZE=4"),
    ("lightning", {"LOCAL_RANK": "-1"}, "LOCAL_RANK=-1 must satisfy 0 <= LOCAL_RANK"),
    ("lightning", {"NODE_RANK": "", "GROUP_RANK": "-1"}, "GROUP_RANK=-1 must satisfy 0 <= GROUP_RANK"),
]


def _set(monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def lsf_rankfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rankfile = tmp_path / "rankfile"
    rankfile.write_text("\n".join(["launch", socket.gethostname(), socket.gethostname(), ""]))
    monkeypatch.setenv("LSB_DJOB_RANKFILE", str(rankfile))


@pytest.mark.parametrize("name", sorted(CONSISTENT))
def test_consistent_ranks_pass(name: str, monkeypatch: pytest.MonkeyPatch, lsf_rankfile: None) -> None:
    _set(monkeypatch, CONSISTENT[name])
    ENVIRONMENT_REGISTRY.create(name).validate_ranks()


@pytest.mark.parametrize(
    ("name", "changes", "message"), INCONSISTENT, ids=[f"{n}-{','.join(c)}" for n, c, _ in INCONSISTENT]
)
def test_inconsistent_ranks_raise_naming_the_variables(
    name: str, changes: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch, lsf_rankfile: None
) -> None:
    _set(monkeypatch, {**CONSISTENT[name], **changes})
    with pytest.raises(ValueError, match=re.escape(message)):
        ENVIRONMENT_REGISTRY.create(name).validate_ranks()


def test_the_message_says_which_environment_and_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, {**CONSISTENT["torchelastic"], "RANK": "7", "WORLD_SIZE": "2", "LOCAL_RANK": "5"})
    with pytest.raises(ValueError) as info:
        TorchElasticEnvironment().validate_ranks()
    message = str(info.value)
    assert message.startswith("TorchElasticEnvironment reads inconsistent ranks from the environment: ")
    # every inconsistency at once, so one fix is enough
    assert "RANK=7 must satisfy 0 <= RANK < WORLD_SIZE=2; LOCAL_RANK=5 must satisfy" in message
    assert "Fix the launcher's environment variables" in message


def test_an_interactive_slurm_job_is_not_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """In `salloc`/`srun --pty bash` fabric starts the processes itself; the SLURM_* ranks are the shell's."""
    _set(monkeypatch, {**CONSISTENT["slurm"], "SLURM_JOB_NAME": "bash", "SLURM_PROCID": "99"})
    SLURMEnvironment().validate_ranks()


def test_the_ranks_a_setter_fixed_are_named_so(monkeypatch: pytest.MonkeyPatch) -> None:
    env = LightningEnvironment()
    env.set_world_size(2)
    env.set_global_rank(3)
    with pytest.raises(ValueError, match=re.escape("global rank (set)=3 must satisfy 0 <= global rank (set) <")):
        env.validate_ranks()


@pytest.mark.parametrize("node_rank", ["2", "5"])
def test_lightning_node_rank_must_be_one_of_num_nodes(node_rank: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """fabric gives this node's processes the ranks node_rank * devices + local_rank: past the world they would hang."""
    monkeypatch.setenv("NODE_RANK", node_rank)
    env = LightningEnvironment()
    env.validate_ranks()  # nothing inconsistent in the variables alone
    with pytest.raises(ValueError, match=re.escape(f"NODE_RANK={node_rank} must satisfy 0 <= NODE_RANK < num_nodes=2")):
        env.validate_settings(num_devices=2, num_nodes=2)
    env.validate_settings(num_devices=2, num_nodes=int(node_rank) + 1)
