"""DeepSpeed ZeRO-3 training started by ``fabric run --devices N``, then a checkpoint.

Every process trains ``--steps`` SGD (momentum) steps of a tiny model on its share of global batches of
``GLOBAL_BATCH`` samples (``setup_dataloaders``: contiguous global batches, so one process training on them is the
reference), then ``fabric.save(--ckpt, {"model", "optimizer", "step"})`` writes DeepSpeed's sharded checkpoint:
each process its partition of the parameters and optimizer state. Every process records its pid in ``--pid-dir``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_core import Fabric
from fabric_strategies import DeepSpeedStrategy

GLOBAL_BATCH, SAMPLES, FEATURES = 16, 64, 6
# ZeRO-3 keeps parameters below a size threshold whole on every process: 0 partitions even this tiny model's
ZERO3 = {
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "zero_allow_untested_optimizer": True,
    "train_micro_batch_size_per_gpu": 1,
}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, 12), nn.Tanh(), nn.Linear(12, 3))


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def dataset() -> TensorDataset:
    generator = torch.Generator().manual_seed(9)
    return TensorDataset(torch.randn(SAMPLES, FEATURES, generator=generator), torch.randn(SAMPLES, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--pid-dir", default=None)
    args = parser.parse_args(sys.argv[1:])
    from multi_node import record_pid  # from this script's folder (on sys.path when it runs, not when imported)

    torch.set_num_threads(1)
    fabric = Fabric(accelerator="cpu", strategy=DeepSpeedStrategy(config=ZERO3))
    fabric.launch()
    record_pid(args.pid_dir, fabric.global_rank)
    model = make_model()
    model, optimizer = fabric.setup(model, make_optimizer(model))
    loader = fabric.setup_dataloaders(DataLoader(dataset(), batch_size=GLOBAL_BATCH // fabric.world_size))
    for _, (x, y) in zip(range(args.steps), loader):
        optimizer.zero_grad()
        fabric.backward(nn.functional.mse_loss(model(x), y))
        optimizer.step()
    # each process holds a partition of every parameter (ZeRO-3), not the full weights
    partitioned = all(p.numel() == 0 or p.ds_numel > p.numel() for p in model.parameters())
    fabric.print(f"partitioned: {partitioned}", flush=True)
    fabric.save(args.ckpt, {"model": model, "optimizer": optimizer, "step": args.steps})
    fabric.print(f"saved at step {args.steps}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
