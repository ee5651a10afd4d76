"""Several nodes on one host: ``fabric run --num-nodes 2 --node-rank K`` as two commands forms one world of 4.

Each command starts 2 CPU processes (``--devices 2``); the two commands meet in torch's ``c10d`` rendezvous on
127.0.0.1, hosted by the one with ``--node-rank 0``. ``scripts/multi_node.py`` records what each process saw: its
ranks, the results of ``all_reduce``/``all_gather``/``broadcast``, the indices of the samples
``setup_dataloaders`` gave it, its trained weights, and whether a checkpoint saved with ``fabric.save`` loaded back
equal. The weights are checked against one process training on the same global batches (rebuilt from the indices).

A failing node: a process of node 1 raises, or is SIGKILLed, or the whole node (its ``fabric run`` and its processes)
is killed. Both commands (the survivor alone when node 1 was killed) exit non-zero within seconds, and the output of
node 0's command names node 1 and, where node 1 could report it, the failing rank.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from nodes import Node, describe, load_script, start_nodes, wait_nodes

SCRIPT = Path(__file__).parent / "scripts" / "multi_node.py"
NODES, DEVICES = 2, 2
WORLD = NODES * DEVICES
STOP_WITHIN = 15.0  # seconds from a failure until every process of both commands has ended


def start_job(helpers: Any, workdir: Path, *script_args: str, max_restarts: int = 0) -> list[Node]:
    options = ["--accelerator", "cpu", "--strategy", "ddp", "--devices", str(DEVICES)]
    options += ["--max-restarts", str(max_restarts)]
    return start_nodes(helpers, workdir, SCRIPT, script_args, num_nodes=NODES, options=options)


def wait_job(helpers: Any, nodes: list[Node], workdir: Path, timeout: float) -> None:
    wait_nodes(helpers, nodes, workdir / "pids", timeout)


def read_records(workdir: Path) -> list[dict[str, Any]]:
    return [json.loads((workdir / "out" / f"rank{rank}.json").read_text()) for rank in range(WORLD)]


def reference_weights(records: list[dict[str, Any]], steps: int) -> dict[str, torch.Tensor]:
    """One process training the same model with SGD on each step's global batch (all ranks' samples together)."""
    script = load_script(SCRIPT)
    model = script.make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    dataset = script.IndexedDataset()
    batches = records[0]["global_batches"]
    assert len(batches) == steps
    assert all(record["global_batches"] == batches for record in records)
    for indices in map(torch.tensor, batches):
        loss = torch.nn.functional.mse_loss(model(dataset.x[indices]), dataset.y[indices])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.state_dict()


@pytest.fixture
def job_dir(workdir: Path) -> Path:
    (workdir / "out").mkdir()
    return workdir


@pytest.mark.timeout(200)
def test_two_commands_form_one_world_of_four(helpers: Any, job_dir: Path) -> None:
    steps = 4  # one epoch: 32 samples in global batches of 4 x 2
    nodes = start_job(helpers, job_dir, *script_args(job_dir, "--steps", str(steps), "--ckpt", "ckpt.pt"))
    wait_job(helpers, nodes, job_dir, timeout=180)
    assert [node.returncode for node in nodes] == [0, 0], describe(nodes)
    records = read_records(job_dir)

    # ranks: each command's processes share a node rank, and global rank = node rank x 2 + local rank
    assert [r["global_rank"] for r in records] == list(range(WORLD))
    assert {r["world_size"] for r in records} == {WORLD}
    assert {r["strategy"] for r in records} == {"DDPStrategy"}
    for record in records:
        assert record["node_rank"] == record["group_rank"], record
        assert record["global_rank"] == record["node_rank"] * DEVICES + record["local_rank"], record
    assert sorted((r["node_rank"], r["local_rank"]) for r in records) == [(0, 0), (0, 1), (1, 0), (1, 1)]

    # collectives across both nodes
    for record in records:
        assert record["all_reduce_sum"] == sum(range(WORLD))
        assert record["all_gather"] == list(range(WORLD))
        assert record["broadcast"] == {"from": WORLD - 1, "payload": [WORLD - 1] * 3}

    # setup_dataloaders sharded the shuffled data: every sample seen exactly once in the epoch, by one rank
    seen = [i for record in records for i in record["epochs"][0]]
    assert sorted(seen) == list(range(32)), seen

    # the same weights everywhere, equal to one process training on the same global batches
    expected = reference_weights(records, steps)
    for record in records:
        weights = {name: torch.tensor(value) for name, value in record["weights"].items()}
        assert weights.keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(weights[name], value, atol=1e-6, rtol=0, msg=f"rank {record['global_rank']}")

    # the checkpoint, written once by global rank 0, loaded back equal on every process
    assert all(record["loaded_equal"] and record["loaded_step"] == steps for record in records), records
    checkpoint = torch.load(job_dir / "ckpt.pt", weights_only=True)
    assert checkpoint["step"] == steps
    for name, value in expected.items():
        torch.testing.assert_close(checkpoint["model"][name], value, atol=1e-6, rtol=0)


def script_args(job_dir: Path, *extra: str) -> list[str]:
    return ["--out-dir", str(job_dir / "out"), "--pid-dir", str(job_dir / "pids"), *extra]


def failure_time(job_dir: Path) -> float:
    return float((job_dir / "pids" / "fail-time").read_text())


@pytest.mark.scale
@pytest.mark.timeout(200)
@pytest.mark.parametrize("kind", ["raise", "sigkill"])
def test_a_failing_process_on_one_node_stops_both_commands(helpers: Any, job_dir: Path, kind: str) -> None:
    """Global rank 2 (node 1, local rank 0) fails at step 2; node 0's processes wait for it in the all-reduce."""
    nodes = start_job(helpers, job_dir, *script_args(job_dir, "--steps", "6", "--fail", f"2:2:{kind}"))
    wait_job(helpers, nodes, job_dir, timeout=180)
    failed = failure_time(job_dir)
    assert all(node.returncode not in (0, None) for node in nodes), describe(nodes)
    late = [(node.rank, round(node.ended - failed, 1)) for node in nodes if node.ended > failed + STOP_WITHIN]
    assert not late, f"(node, seconds after the failure) that ended too late: {late}\n{describe(nodes)}"
    for node in nodes:
        assert "finished" not in node.output, describe(nodes)
        # each command names the node and the rank that failed, not only the processes of its own node that were
        # stopped or lost their connection
        assert re.search(r"node 1\b.*\brank 2\b.*failed", node.output), describe(nodes)
    if kind == "raise":
        assert "RuntimeError: injected failure on purpose" in nodes[1].output, describe(nodes)


@pytest.mark.scale
@pytest.mark.timeout(200)
@pytest.mark.parametrize("lost", [1, 0], ids=["node1-lost", "node0-lost"])
def test_a_killed_node_stops_the_other(helpers: Any, job_dir: Path, lost: int) -> None:
    """One node's ``fabric run`` and its processes are SIGKILLed mid-training (a machine lost; node 0 also hosts the
    rendezvous): the other node ends within seconds, non-zero, and says which node was lost."""
    nodes = start_job(helpers, job_dir, *script_args(job_dir, "--steps", "200", "--step-delay", "0.05"))
    deadline = time.monotonic() + 150
    ranks: dict[int, tuple[int, str]] = {}
    while len(ranks) < WORLD and time.monotonic() < deadline and all(n.process.poll() is None for n in nodes):
        time.sleep(0.1)
        ranks = helpers.recorded_ranks(job_dir / "pids")
    assert len(ranks) == WORLD, describe(nodes)
    time.sleep(2.0)  # a few steps into training
    killed = time.time()
    node_of = {pid: rank // DEVICES for pid, (rank, _) in ranks.items()}
    for pid in [nodes[lost].process.pid, *(pid for pid, node in node_of.items() if node == lost)]:
        os.kill(pid, signal.SIGKILL)
    wait_job(helpers, nodes, job_dir, timeout=120)
    assert nodes[lost].returncode == -signal.SIGKILL
    survivor = nodes[1 - lost]
    assert survivor.returncode not in (0, None), describe(nodes)
    assert survivor.ended is not None
    assert survivor.ended <= killed + STOP_WITHIN, (
        f"node {survivor.rank} ended {survivor.ended - killed:.1f}s after node {lost} was killed\n{describe(nodes)}"
    )
    assert re.search(rf"node {lost}\b.*\blost\b", survivor.output), describe(nodes)


@pytest.mark.scale
@pytest.mark.timeout(300)
@pytest.mark.parametrize("layout", ["2x2", "1x4"])
def test_max_restarts_survives_a_killed_process_and_resumes(helpers: Any, job_dir: Path, layout: str) -> None:
    """World 4 through torch's elastic rendezvous with ``--max-restarts 1``: global rank 2 is SIGKILLed at step 3 of
    the first attempt (a checkpoint was saved at step 2). Every process restarts, the new attempt resumes from step 2
    and finishes with the weights of one process training on the same 6 global batches."""
    steps = 6
    args = script_args(job_dir, "--steps", str(steps), "--ckpt", "ckpt.pt", "--save-every", "2", "--resume")
    args += ["--fail", "2:3:sigkill", "--fail-once"]
    if layout == "2x2":
        nodes = start_job(helpers, job_dir, *args, max_restarts=1)
        wait_job(helpers, nodes, job_dir, timeout=280)
        assert [node.returncode for node in nodes] == [0, 0], describe(nodes)
        output = "".join(node.output for node in nodes)
    else:
        options = ["--accelerator", "cpu", "--strategy", "ddp", "--devices", str(WORLD), "--max-restarts", "1"]
        command = [sys.executable, "-m", "fabric_core.cli", "run", *options, "--", str(SCRIPT), *args]
        result = helpers.run_command(command, job_dir, timeout=280, pid_dir=job_dir / "pids", settle=10)
        assert result.returncode == 0, result.describe()
        assert not result.leftovers, result.describe()
        output = result.output
    assert (job_dir / "pids" / "fail-time").exists(), output  # the first attempt really lost a process
    started = sorted(rank for rank, _ in helpers.recorded_ranks(job_dir / "pids").values())
    assert started == sorted([*range(WORLD), *range(WORLD)]), started  # two attempts of 4 processes
    assert "resumed from step 2" in output, output
    records = read_records(job_dir)
    assert [record["first_step"] for record in records] == [2] * WORLD
    # the agent of the killed process used its restart; on two nodes, the other agent restarted its processes because
    # a node rejoined the rendezvous, which torch does not count as a restart
    assert records[2]["restart_count"] == 1
    expected = reference_weights(records, steps)
    for record in records:
        for name, value in expected.items():
            torch.testing.assert_close(torch.tensor(record["weights"][name]), value, atol=1e-6, rtol=0, msg=name)
