"""K-fold cross-validation with fabric: one Fabric for all folds, a freshly initialised model for each fold.

The data are generated here (nothing is downloaded): 2-D points on three noisy concentric rings, the ring being the
class, which a small MLP learns in a few epochs. The points are split into K folds; each fold in turn is held out
for validation while a new model trains on the others, and the script reports the accuracy of every fold and
their mean: an estimate of how well the recipe generalises that does not depend on one lucky split.

Run on one process:                 python examples/kfold.py
Run on 2 CPU processes with DDP:    fabric run --accelerator cpu --devices 2 examples/kfold.py
Short run (for CI):                 add --fast

Each fold's training loss goes to a CSV file and TensorBoard under ``--log-dir``; at the end rank zero draws them in
one PNG (``pip install -r examples/requirements.txt``).
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from _pictures import finish, make_loggers
from torch import nn
from torch.nn.functional import cross_entropy
from torch.utils.data import DataLoader, Subset, TensorDataset

from fabric_core import Fabric

RINGS = 3


def ring_points(count: int, seed: int) -> TensorDataset:
    """``count`` noisy points on ``RINGS`` concentric rings (radius 1, 2, 3), labelled by ring."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, RINGS, (count,), generator=generator)
    angle = torch.rand(count, generator=generator) * 2 * math.pi
    radius = labels.float() + 1 + 0.25 * torch.randn(count, generator=generator)
    points = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return TensorDataset(points, labels)


def fold_indices(count: int, folds: int, seed: int) -> list[torch.Tensor]:
    """A random partition of ``range(count)`` into ``folds`` nearly equal parts (the same on every process)."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return list(order.chunk(folds))


def classifier() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, RINGS))


def accuracy(fabric: Fabric, model: nn.Module, loader: DataLoader) -> float:
    """Accuracy over every process's share of ``loader``."""
    model.eval()
    counts = torch.zeros(2, device=fabric.device)
    with torch.no_grad():
        for points, labels in loader:
            counts[0] += (model(points).argmax(1) == labels).sum()
            counts[1] += labels.numel()
    model.train()
    counts = fabric.all_reduce(counts, reduce_op="sum")
    return (counts[0] / counts[1]).item()


def train_fold(
    fabric: Fabric,
    dataset: TensorDataset,
    train_idx: torch.Tensor,
    val_idx: torch.Tensor,
    args: argparse.Namespace,
    epochs: int,
    fold: int,
) -> float:
    """Train a new model on ``train_idx`` and return its validation accuracy on ``val_idx``."""
    train_loader = DataLoader(Subset(dataset, train_idx.tolist()), batch_size=args.batch_size, shuffle=True)
    val_loader = DataLoader(Subset(dataset, val_idx.tolist()), batch_size=256)
    train_loader, val_loader = fabric.setup_dataloaders(train_loader, val_loader)
    model = classifier()  # a fresh initialisation for every fold
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    model, optimizer = fabric.setup(model, optimizer)
    step = 0
    for epoch in range(epochs):
        for points, labels in fabric.progress(train_loader, desc=f"fold {fold + 1} epoch {epoch + 1}"):
            loss = cross_entropy(model(points), labels)
            optimizer.zero_grad()
            fabric.backward(loss)
            optimizer.step()
            step += 1
            fabric.log(f"fold_{fold + 1}_loss", loss.detach(), step=step)
    validation = accuracy(fabric, model, val_loader)
    fabric.log(f"val_acc_fold_{fold + 1}", validation, step=step)
    return validation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a short run (a few seconds of training)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None, help="epochs per fold")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--log-dir", default="fabric_logs", help="metrics (CSV, TensorBoard) and pictures go here")
    args = parser.parse_args()
    if args.folds < 2:
        parser.error(f"--folds must be at least 2, got {args.folds}")
    epochs = args.epochs or (4 if args.fast else 20)
    samples = args.samples or (2000 if args.fast else 10000)

    csv_logger, tensorboard = make_loggers(args.log_dir, "kfold")
    fabric = Fabric(loggers=[csv_logger, tensorboard])
    fabric.launch()
    fabric.seed_everything(0)
    dataset = ring_points(samples, seed=1)
    folds = fold_indices(samples, args.folds, seed=2)
    fabric.print(
        f"{args.folds}-fold cross-validation on {fabric.world_size} process(es): {samples} points,"
        f" {epochs} epochs per fold"
    )
    start = time.perf_counter()
    scores = []
    accuracies = [f"val_acc_fold_{k + 1}" for k in range(args.folds)]  # what the folds' bar shows
    for k, val_idx in enumerate(fabric.progress(folds, desc="folds", metrics=accuracies)):
        train_idx = torch.cat([f for i, f in enumerate(folds) if i != k])
        fabric.seed_everything(100 + k, verbose=False)  # each fold's initialisation and shuffling, reproducibly
        scores.append(train_fold(fabric, dataset, train_idx, val_idx, args, epochs, fold=k))
        fabric.print(
            f"fold {k + 1}/{args.folds}: validation accuracy {scores[-1]:.1%} ({time.perf_counter() - start:.1f}s)"
        )
    mean = sum(scores) / len(scores)
    spread = (sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)) ** 0.5
    title = f"{args.folds}-fold cross-validation: training loss per fold (mean validation accuracy {mean:.1%})"
    finish(fabric, csv_logger, [["fold_*"]], title)
    if fabric.is_global_zero:
        print(f"final: mean validation accuracy {mean:.1%} (std {spread:.1%}) over {args.folds} folds")


if __name__ == "__main__":
    main()
