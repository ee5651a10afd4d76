"""Train and reload a tiny model on a 2-D device mesh, started by ``fabric run --devices N`` (N = 8, 3 or 1).

``--layout``:

- ``hybrid``: ``FSDPStrategy(sharding_strategy="HYBRID_SHARD", device_mesh=(replicas, shard_size))``: parameters
  sharded within each group of ``shard_size`` processes, replicated across the ``replicas`` groups;
- ``model_parallel``: ``ModelParallelStrategy`` with tensor parallelism (``w1`` column-wise, ``w2`` row-wise) on the
  ``tensor_parallel`` dimension and ``fully_shard`` on the ``data_parallel`` one.

``--mesh A,B`` is (replicas, shard_size) or (data_parallel, tensor_parallel); ``auto`` keeps the strategy's
default (on 2 nodes x 4 processes, HYBRID_SHARD's is one replica per node: 2 x 4). Every step trains on a global
batch of ``GLOBAL_BATCH`` samples, whatever the mesh: ``setup_dataloaders`` splits it across the data-parallel
ranks, so one process training on the same batches (the test's reference) must end with the same weights.

``--phase train``: ``--steps`` SGD (momentum) steps, save a sharded checkpoint to ``--ckpt``, then load it into a
new model and optimizer in the same processes. ``--phase resume``: load ``--ckpt`` (saved at another world size),
then train one more step. Global rank 0 writes the full weights after each stage to ``--out``, and every rank its
mesh and local shard shapes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, TensorDataset

from fabric_core import Fabric
from fabric_strategies import FSDPStrategy, ModelParallelStrategy

GLOBAL_BATCH, SAMPLES, FEATURES, HIDDEN = 24, 96, 6, 8


class FeedForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Linear(FEATURES, HIDDEN)
        self.w2 = nn.Linear(HIDDEN, FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(torch.tanh(self.w1(x)))


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return FeedForward()


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def dataset() -> TensorDataset:
    generator = torch.Generator().manual_seed(5)
    return TensorDataset(torch.randn(SAMPLES, FEATURES, generator=generator), torch.randn(SAMPLES, FEATURES))


def loss_fn(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(output, target)


def parallelize(module: nn.Module, device_mesh: Any) -> nn.Module:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tensor_parallel = device_mesh["tensor_parallel"]
    if tensor_parallel.size() > 1:
        parallelize_module(module, tensor_parallel, {"w1": ColwiseParallel(), "w2": RowwiseParallel()})
    fully_shard(module, mesh=device_mesh["data_parallel"])
    return module


def make_strategy(layout: str, mesh: tuple[int, int] | None) -> Any:
    """``mesh=None``: the strategy's default (HYBRID_SHARD: one replica per node; model parallel: TP within a node)."""
    if layout == "hybrid":
        return FSDPStrategy(sharding_strategy="HYBRID_SHARD", device_mesh=mesh)
    if mesh is None:
        return ModelParallelStrategy(parallelize)
    return ModelParallelStrategy(parallelize, data_parallel_size=mesh[0], tensor_parallel_size=mesh[1])


def full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: (value.full_tensor() if isinstance(value, DTensor) else value).detach().cpu().clone()
        for name, value in model.state_dict().items()
    }


def describe_layout(fabric: Fabric, model: nn.Module) -> dict[str, Any]:
    mesh = fabric.strategy.device_mesh  # type: ignore[attr-defined]
    return {
        "mesh_shape": list(mesh.shape),
        "mesh_dim_names": list(mesh.mesh_dim_names),
        "sampler": fabric.strategy.distributed_sampler_kwargs,
        "shards": {
            name: {"local": list(p.to_local().shape), "placements": [str(pl) for pl in p.placements]}
            for name, p in model.named_parameters()
            if isinstance(p, DTensor)
        },
    }


def train_steps(fabric: Fabric, model: Any, optimizer: Any, first: int, count: int) -> None:
    """Steps ``first`` to ``first + count - 1`` of the run (step s trains on samples [24 s, 24 s + 24))."""
    replicas = (fabric.strategy.distributed_sampler_kwargs or {"num_replicas": 1})["num_replicas"]
    loader = fabric.setup_dataloaders(DataLoader(dataset(), batch_size=GLOBAL_BATCH // replicas, shuffle=False))
    for x, y in itertools.islice(loader, first, first + count):
        optimizer.zero_grad()
        fabric.backward(loss_fn(model(x), y))
        optimizer.step()


def set_up(fabric: Fabric) -> tuple[Any, Any]:
    with fabric.init_module(empty_init=False):
        model = make_model()
    model = fabric.setup(model)
    return model, fabric.setup_optimizers(make_optimizer(model))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layout", choices=("hybrid", "model_parallel"), required=True)
    parser.add_argument("--mesh", default="auto", help="A,B or auto (the strategy's default for the nodes)")
    parser.add_argument("--phase", choices=("train", "resume"), required=True)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--pid-dir", default=None)
    args = parser.parse_args(sys.argv[1:])
    from multi_node import record_pid  # from this script's folder (on sys.path when it runs, not when imported)

    torch.set_num_threads(1)
    mesh = None if args.mesh == "auto" else tuple(int(n) for n in args.mesh.split(","))
    fabric = Fabric(accelerator="cpu", strategy=make_strategy(args.layout, mesh))  # type: ignore[arg-type]
    fabric.launch()
    record_pid(args.pid_dir, fabric.global_rank)
    results: dict[str, Any] = {"world_size": fabric.world_size}
    model, optimizer = set_up(fabric)
    results["layout"] = describe_layout(fabric, model)
    if args.phase == "train":
        train_steps(fabric, model, optimizer, 0, args.steps)
        results["trained"] = full_weights(model)
        fabric.save(args.ckpt, {"model": model, "optimizer": optimizer, "step": args.steps})
        model, optimizer = set_up(fabric)  # new shards, reloaded in the same processes
    state = {"model": model, "optimizer": optimizer, "step": 0}
    fabric.load(args.ckpt, state)
    results["loaded"] = full_weights(model)
    train_steps(fabric, model, optimizer, state["step"], 1)  # the optimizer state (momentum) was resharded too
    results["one_more_step"] = full_weights(model)
    results["step"] = state["step"]
    if fabric.global_rank == 0:
        torch.save(results, args.out)
    with open(f"{args.out}.rank{fabric.global_rank}.json", "w") as f:
        json.dump(results["layout"], f)
    fabric.print(f"{args.phase} done at world size {fabric.world_size}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
