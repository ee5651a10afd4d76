"""World size 8 on 2-D device meshes (8 oversubscribed CPU processes over gloo), reloaded at world sizes 8, 3 and 1.

- FSDP hybrid sharding: two ``fabric run --num-nodes 2 --devices 4`` commands (two nodes on this host) with
  ``FSDPStrategy(sharding_strategy="HYBRID_SHARD")``, whose default mesh is one replica per node: 2 replicas x 4
  shards (placements ``(Replicate(), Shard(0))``).
- Model parallel 2-D: one ``fabric run --devices 8`` with ``ModelParallelStrategy`` at data parallel 4 x tensor
  parallel 2 (``w1`` column-wise, ``w2`` row-wise, then ``fully_shard`` on the data-parallel dimension).

``scripts/sharded_mesh.py`` trains 2 SGD-with-momentum steps on global batches of 24 samples, saves a sharded
checkpoint, reloads it into new shards in the same processes and trains one more step; then fresh runs at world
sizes 3 and 1 load that checkpoint (model and optimizer state resharded) and train the same third step. After every
stage the full weights must equal those of one process training the same model on the same global batches.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from nodes import describe, load_script, start_nodes, wait_nodes
from torch.utils.data import DataLoader

from fabric_core import Fabric

SCRIPT = Path(__file__).parent / "scripts" / "sharded_mesh.py"
STEPS = 2
ATOL = 1e-6
W2_ROWS = [2, 2, 2, 0]  # the rows of w2's 6 that fully_shard gives each of 4 processes (chunks of ceil(6 / 4))


def reference(steps: int) -> list[dict[str, torch.Tensor]]:
    """The weights of one process after each of ``steps`` steps on the global batches."""
    script = load_script(SCRIPT)
    model = script.make_model()
    optimizer = script.make_optimizer(model)
    weights = []
    for x, y in list(DataLoader(script.dataset(), batch_size=script.GLOBAL_BATCH))[:steps]:
        optimizer.zero_grad()
        script.loss_fn(model(x), y).backward()
        optimizer.step()
        weights.append({name: value.detach().clone() for name, value in model.state_dict().items()})
    return weights


def assert_weights(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert actual.keys() == expected.keys(), what
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, atol=ATOL, rtol=0, msg=f"{what}: {name}")


def script_args(workdir: Path, layout: str, phase: str, mesh: str, out: str) -> list[str]:
    args = ["--layout", layout, "--phase", phase, "--mesh", mesh, "--steps", str(STEPS)]
    return [*args, "--ckpt", str(workdir / "ckpt"), "--out", str(workdir / out), "--pid-dir", str(workdir / "pids")]


def run_one_command(helpers: Any, workdir: Path, devices: int, args: list[str]) -> None:
    command = [sys.executable, "-m", "fabric_core.cli", "run", "--accelerator", "cpu", "--devices", str(devices)]
    command += ["--", str(SCRIPT), *args]
    result = helpers.run_command(command, workdir, timeout=240, pid_dir=workdir / "pids", settle=10)
    assert result.returncode == 0, result.describe()
    assert not result.leftovers, result.describe()


def check_reloads(helpers: Any, workdir: Path, layout: str, smaller_meshes: dict[int, str]) -> None:
    """The world-8 run's results, then fresh runs at the smaller world sizes loading its checkpoint."""
    expected = reference(STEPS + 1)
    results = torch.load(workdir / "world8.pt", weights_only=True)
    assert results["world_size"] == 8
    assert_weights(results["trained"], expected[STEPS - 1], "world 8 after training")
    assert_weights(results["loaded"], expected[STEPS - 1], "world 8 after reloading")
    assert_weights(results["one_more_step"], expected[STEPS], "world 8, one more step")
    assert (workdir / "ckpt").is_dir()  # a sharded checkpoint
    for world, mesh in smaller_meshes.items():
        run_one_command(helpers, workdir, world, script_args(workdir, layout, "resume", mesh, f"world{world}.pt"))
        results = torch.load(workdir / f"world{world}.pt", weights_only=True)
        assert results["world_size"] == world
        assert results["step"] == STEPS
        assert_weights(results["loaded"], expected[STEPS - 1], f"world {world} after loading")
        assert_weights(results["one_more_step"], expected[STEPS], f"world {world}, one more step")


def layout_of(workdir: Path, rank: int) -> dict[str, Any]:
    return json.loads((workdir / f"world8.pt.rank{rank}.json").read_text())


@pytest.mark.scale
@pytest.mark.timeout(600)
def test_fsdp_hybrid_shard_on_two_nodes_of_four(helpers: Any, workdir: Path) -> None:
    args = script_args(workdir, "hybrid", "train", "auto", "world8.pt")
    nodes = start_nodes(helpers, workdir, SCRIPT, args, num_nodes=2, options=["--accelerator", "cpu", "--devices", "4"])
    wait_nodes(helpers, nodes, workdir / "pids", timeout=300)
    assert [node.returncode for node in nodes] == [0, 0], describe(nodes)
    for rank in range(8):
        layout = layout_of(workdir, rank)
        assert layout["mesh_shape"] == [2, 4]
        assert layout["mesh_dim_names"] == ["replicate", "shard"]
        assert layout["sampler"] == {"num_replicas": 8, "rank": rank}
        # each process holds a quarter of the rows of every parameter, the same quarter as its replica on the other
        # node: w1 (8 x 6) 2 rows each, w2 (6 x 8) 2, 2, 2 and 0 rows
        assert layout["shards"]["w1.weight"] == {"local": [2, 6], "placements": ["R", "S(0)"]}
        assert layout["shards"]["w2.weight"] == {"local": [W2_ROWS[rank % 4], 8], "placements": ["R", "S(0)"]}
    check_reloads(helpers, workdir, "hybrid", {3: "auto", 1: "auto"})


@pytest.mark.scale
@pytest.mark.timeout(600)
def test_model_parallel_2d_data_parallel_4_by_tensor_parallel_2(helpers: Any, workdir: Path) -> None:
    run_one_command(helpers, workdir, 8, script_args(workdir, "model_parallel", "train", "4,2", "world8.pt"))
    for rank in range(8):
        layout = layout_of(workdir, rank)
        assert layout["mesh_shape"] == [4, 2]
        assert layout["mesh_dim_names"] == ["data_parallel", "tensor_parallel"]
        # the two processes of a tensor-parallel group read the same data
        assert layout["sampler"] == {"num_replicas": 4, "rank": rank // 2}
        # w1 (8 x 6) split column-wise over 2 (4 rows), then those rows over 4: one row each; w2 (6 x 8) split
        # row-wise (4 columns), then its 6 rows over 4: 2, 2, 2 and 0
        assert layout["shards"]["w1.weight"]["local"] == [1, 6]
        assert layout["shards"]["w2.weight"]["local"] == [W2_ROWS[rank // 2], 4]
    # tensor parallelism needs an even split: world 3 loads as data parallel 3, world 1 as one process
    check_reloads(helpers, workdir, "model_parallel", {3: "3,1", 1: "1,1"})


@pytest.mark.parametrize(
    ("layout", "mesh", "message"),
    [
        ("hybrid", (3, 2), r"device_mesh=\(3, 2\) has 6 processes but the run has 4"),
        ("model_parallel", (3, 2), r"data_parallel_size=3 x tensor_parallel_size=2 = 6 processes, but the run has 4"),
    ],
    ids=["hybrid", "model_parallel"],
)
def test_a_mesh_that_does_not_fit_the_world_fails_before_anything_starts(
    layout: str, mesh: tuple[int, int], message: str
) -> None:
    strategy = load_script(SCRIPT).make_strategy(layout, mesh)
    with pytest.raises(ValueError, match=message):
        Fabric(accelerator="cpu", devices=4, strategy=strategy)
    assert not torch.distributed.is_initialized()
