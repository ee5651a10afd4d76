"""Train a small convnet to classify synthetic images, with fabric.

The images are generated here (nothing is downloaded): each of the 10 classes is a fixed random 3x16x16 pattern,
and every sample is its class's pattern plus noise, so a small convnet learns the task within a few epochs.

Run on one process:                 python examples/image_classifier.py
Run on 2 CPU processes with DDP:    fabric run --accelerator cpu --devices 2 --strategy ddp examples/image_classifier.py
Short run (for CI):                 add --fast

Progress bars (``fabric.progress``) go to stderr on rank zero; metrics go to a CSV file and TensorBoard under
``--log-dir``, with a PNG of the loss and accuracy curves at the end (``pip install -r examples/requirements.txt``).

``Fabric()`` takes no arguments: the command line chooses accelerator, devices, strategy and precision.
"""

from __future__ import annotations

import argparse
import time

import torch
from _pictures import finish, make_loggers
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the usual PyTorch spelling
from torch.utils.data import DataLoader, TensorDataset

from fabric_core import Fabric

CLASSES = 10
IMAGE_SHAPE = (3, 16, 16)


def synthetic_images(samples: int, noise: float, seed: int) -> TensorDataset:
    """``samples`` noisy images of the ``CLASSES`` fixed patterns, with their labels (the same on every process).

    The patterns are the same for every ``seed``; the seed picks the labels and the noise.
    """
    patterns = torch.randn(CLASSES, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(1234))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (samples,), generator=generator)
    images = patterns[labels] + noise * torch.randn(samples, *IMAGE_SHAPE, generator=generator)
    return TensorDataset(images, labels)


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(32 * 4 * 4, CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images).flatten(1))


def evaluate(fabric: Fabric, model: nn.Module, loader: DataLoader) -> tuple[float, float]:
    """Mean loss and accuracy over every process's share of ``loader``."""
    model.eval()
    totals = torch.zeros(3, device=fabric.device)
    with torch.no_grad():
        for images, labels in loader:
            logits = model(images)
            totals[0] += F.cross_entropy(logits, labels, reduction="sum")
            totals[1] += (logits.argmax(1) == labels).sum()
            totals[2] += labels.numel()
    totals = fabric.all_reduce(totals, reduce_op="sum")
    model.train()
    return (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a short run (a few seconds)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--log-dir", default="fabric_logs", help="metrics (CSV, TensorBoard) and pictures go here")
    args = parser.parse_args()
    epochs = args.epochs or (2 if args.fast else 4)
    train_samples, test_samples = (1024, 256) if args.fast else (2048, 512)

    csv_logger, tensorboard = make_loggers(args.log_dir, "image_classifier")
    fabric = Fabric(loggers=[csv_logger, tensorboard])
    fabric.launch()
    fabric.seed_everything(42)

    train_loader = DataLoader(
        synthetic_images(train_samples, noise=1.0, seed=0), batch_size=args.batch_size, shuffle=True
    )
    test_loader = DataLoader(synthetic_images(test_samples, noise=1.0, seed=1), batch_size=256)
    model = ConvNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    model, optimizer = fabric.setup(model, optimizer)
    train_loader, test_loader = fabric.setup_dataloaders(train_loader, test_loader)

    fabric.print(
        f"Training on {fabric.world_size} process(es), strategy {type(fabric.strategy).__name__}, device"
        f" {fabric.device}: {train_samples} images, {epochs} epochs"
    )
    start = time.perf_counter()
    step = 0
    for epoch in fabric.progress(range(epochs), desc="epochs"):
        running = torch.zeros(2, device=fabric.device)
        for images, labels in fabric.progress(train_loader, desc=f"epoch {epoch + 1}"):
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            fabric.backward(loss)
            optimizer.step()
            running += torch.stack([loss.detach() * labels.numel(), torch.tensor(labels.numel(), device=fabric.device)])
            step += 1
            fabric.log("train_loss", loss.detach(), step=step)  # this process's loss: shown by the bar, logged
        running = fabric.all_reduce(running, reduce_op="sum")
        test_loss, accuracy = evaluate(fabric, model, test_loader)
        fabric.log_dict({"test_loss": test_loss, "test_accuracy": accuracy}, step=step)
        fabric.print(
            f"epoch {epoch + 1}/{epochs}: train loss {(running[0] / running[1]).item():.4f}, test loss"
            f" {test_loss:.4f}, test accuracy {accuracy:.1%} ({time.perf_counter() - start:.1f}s)"
        )
    finish(fabric, csv_logger, [["train_loss", "test_loss"], ["test_accuracy"]], "image classifier")
    if fabric.is_global_zero:
        print(f"final loss: {test_loss:.4f} (test accuracy {accuracy:.1%})")


if __name__ == "__main__":
    main()
