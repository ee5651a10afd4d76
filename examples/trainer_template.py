"""Build your own trainer on fabric: a small ``Trainer`` to copy and change.

What it shows:
- a task module that owns its steps (``training_step``, ``validation_step``, ``configure_optimizers``), routed
  through the strategy with ``fabric.mark_forward_method`` so DDP synchronises their gradients;
- callbacks called with ``fabric.call`` (each hook gets only the keyword arguments it accepts);
- gradient accumulation that skips the gradient all-reduce on accumulating steps with ``fabric.no_backward_sync``;
- checkpoints written with ``fabric.save`` holding model, optimizer, trainer counters and the dataloader, so
  ``fabric.load`` resumes mid-epoch at the next batch;
- ``fabric.progress`` bars on rank zero (live on a terminal, plain lines in logs) showing the logged metrics, and
  loggers (``CSVLogger`` and ``TensorBoardLogger`` in one folder per run) fed through ``fabric.log_dict``, with a PNG
  of each run's loss curves beside them (``pip install -r examples/requirements.txt``).

The script trains a classifier on generated data (nothing is downloaded) three times: once without a break, once
stopped half-way, and once resumed from that run's checkpoint; the resumed run ends with the very same weights.

Run on one process:                 python examples/trainer_template.py
Run on 2 CPU processes with DDP:    fabric run --accelerator cpu --devices 2 examples/trainer_template.py
Short run (for CI):                 add --fast
"""

from __future__ import annotations

import argparse
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from _pictures import draw_curves, make_loggers
from torch import nn
from torch.nn.functional import cross_entropy
from torch.utils.data import DataLoader, TensorDataset

from fabric_core import Fabric, FabricModule

FEATURES, CLASSES = 20, 4


# -- the task: what to train ----------------------------------------------------------------------------------------
class TaskModule(nn.Module, ABC):
    """A model that knows how to train itself: the trainer calls these three methods."""

    @abstractmethod
    def training_step(self, batch: Any) -> torch.Tensor:
        """The loss of one training batch."""

    @abstractmethod
    def validation_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """Sums over one validation batch: ``loss_sum``, ``correct`` and ``count``."""

    @abstractmethod
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The optimizer of this task's parameters."""


class Classifier(TaskModule):
    """An MLP classifier."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Linear(FEATURES, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, CLASSES)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return cross_entropy(self(x), y)

    def validation_step(self, batch: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sums, so the trainer can add them up over batches and processes."""
        x, y = batch
        logits = self(x)
        return {
            "loss_sum": cross_entropy(logits, y, reduction="sum"),
            "correct": (logits.argmax(1) == y).sum().float(),
            "count": torch.tensor(float(y.numel()), device=y.device),
        }

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def teacher_dataset(count: int, seed: int) -> TensorDataset:
    """Gaussian inputs labelled by a fixed random two-layer "teacher" network (the same on every process)."""
    generator = torch.Generator().manual_seed(1234)  # the teacher is the same for every split
    w1, w2 = torch.randn(FEATURES, 32, generator=generator), torch.randn(32, CLASSES, generator=generator)
    x = torch.randn(count, FEATURES, generator=torch.Generator().manual_seed(seed))
    return TensorDataset(x, (torch.tanh(x @ w1) @ w2).argmax(1))


# -- the trainer ----------------------------------------------------------------------------------------------------
class Trainer:
    """A compact training loop on fabric. ``Fabric()`` takes its flags from ``fabric run`` (or pass
    ``fabric_kwargs``, e.g. ``{"accelerator": "cpu", "devices": 2}``)."""

    def __init__(
        self,
        *,
        max_epochs: int = 10,
        max_steps: int | None = None,
        grad_accum_steps: int = 1,
        clip_grad_norm: float | None = None,
        log_every_n_steps: int = 10,
        checkpoint_dir: str = "checkpoints",
        checkpoint_every_n_steps: int | None = None,
        callbacks: Sequence[Any] = (),
        loggers: Sequence[Any] = (),
        fabric_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
        self.fabric = Fabric(callbacks=list(callbacks), loggers=list(loggers), **(fabric_kwargs or {}))
        self.max_epochs, self.max_steps = max_epochs, max_steps
        self.grad_accum_steps, self.clip_grad_norm = grad_accum_steps, clip_grad_norm
        self.log_every_n_steps = log_every_n_steps
        self.checkpoint_dir, self.checkpoint_every_n_steps = checkpoint_dir, checkpoint_every_n_steps
        # counters, saved in checkpoints through state_dict()
        self.global_step = 0  # optimizer steps
        self.epoch = 0
        self.batch_in_epoch = 0  # batches of the current epoch already trained on
        self.should_stop = False
        self.last_checkpoint: str | None = None
        self.validation_metrics: dict[str, float] = {}

    # checkpointed counters: the Trainer is itself a stateful object in the checkpoint
    def state_dict(self) -> dict[str, int]:
        return {"global_step": self.global_step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.global_step, self.epoch, self.batch_in_epoch = (
            state["global_step"],
            state["epoch"],
            state["batch_in_epoch"],
        )

    def fit(
        self,
        task: TaskModule,
        train_loader: DataLoader,
        val_loader: DataLoader | None = None,
        ckpt_path: str | None = None,
    ) -> FabricModule:
        """Train ``task``; ``ckpt_path`` resumes from a checkpoint file ("last": the newest in ``checkpoint_dir``)."""
        fabric = self.fabric
        fabric.launch()
        optimizer = task.configure_optimizers()
        model, optimizer = fabric.setup(task, optimizer)
        fabric.mark_forward_method(model, "training_step")
        fabric.mark_forward_method(model, "validation_step")
        train_loader = fabric.setup_dataloaders(train_loader)
        val_loader = fabric.setup_dataloaders(val_loader) if val_loader is not None else None
        state = {"model": model, "optimizer": optimizer, "train_loader": train_loader, "trainer": self}
        if ckpt_path == "last":
            ckpt_path = newest_checkpoint(self.checkpoint_dir)
        if ckpt_path is not None:
            fabric.load(ckpt_path, state)
            fabric.print(f"resumed from {ckpt_path} at epoch {self.epoch}, step {self.global_step}")

        fabric.call("on_fit_start", trainer=self, model=model)
        while self.epoch < self.max_epochs and not self.should_stop:
            fabric.call("on_train_epoch_start", trainer=self, epoch=self.epoch)
            self.train_epoch(model, optimizer, train_loader, state)
            if self.should_stop:
                break
            self.epoch += 1
            self.batch_in_epoch = 0
            if val_loader is not None:
                self.validate(model, val_loader)
        self.save(state)
        fabric.call("on_fit_end", trainer=self, model=model)
        for logger in fabric.loggers:
            logger.finalize("success")
        return model

    def train_epoch(
        self, model: FabricModule, optimizer: torch.optim.Optimizer, loader: Any, state: dict[str, Any]
    ) -> None:
        fabric, total = self.fabric, len(loader)
        # a resumed loader starts at the first batch not yet trained on; the bar (rank zero) shows the logged metrics
        for batch in fabric.progress(loader, desc=f"epoch {self.epoch + 1}", total=total - self.batch_in_epoch):
            self.batch_in_epoch += 1
            last_of_epoch = self.batch_in_epoch == total
            accumulating = self.batch_in_epoch % self.grad_accum_steps != 0 and not last_of_epoch
            # on accumulating steps the gradients stay local: no all-reduce until the step that updates
            with fabric.no_backward_sync(model, enabled=accumulating):
                loss = model.training_step(batch)
                fabric.backward(loss / self.grad_accum_steps)
            fabric.call("on_train_batch_end", trainer=self, loss=loss.detach(), batch_index=self.batch_in_epoch)
            if accumulating:
                continue
            if self.clip_grad_norm is not None:
                fabric.clip_gradients(model, optimizer, max_norm=self.clip_grad_norm)
            fabric.call("on_before_optimizer_step", trainer=self, optimizer=optimizer)
            optimizer.step()
            optimizer.zero_grad()
            self.global_step += 1
            if self.global_step % self.log_every_n_steps == 0:
                fabric.log_dict({"train_loss": loss.item(), "epoch": self.epoch}, step=self.global_step)
            if self.checkpoint_every_n_steps and self.global_step % self.checkpoint_every_n_steps == 0:
                self.save(state)
            if self.max_steps is not None and self.global_step >= self.max_steps:
                self.should_stop = True
                break

    def validate(self, model: FabricModule, loader: Any) -> dict[str, float]:
        model.eval()
        sums: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for batch in loader:
                for name, value in model.validation_step(batch).items():
                    sums[name] = sums.get(name, 0) + value
        model.train()
        sums = self.fabric.all_reduce(sums, reduce_op="sum")
        metrics = {
            "val_loss": (sums["loss_sum"] / sums["count"]).item(),
            "val_acc": (sums["correct"] / sums["count"]).item(),
        }
        self.validation_metrics = metrics
        self.fabric.log_dict(metrics, step=self.global_step)
        self.fabric.call("on_validation_end", trainer=self, metrics=metrics)
        return metrics

    def save(self, state: dict[str, Any]) -> None:
        path = os.path.join(self.checkpoint_dir, f"step-{self.global_step:06d}.ckpt")
        self.fabric.save(path, state)
        self.last_checkpoint = path
        self.fabric.call("on_checkpoint_saved", trainer=self, path=path)


def newest_checkpoint(directory: str) -> str | None:
    """The checkpoint of ``directory`` with the highest step, or None when there is none."""
    if not os.path.isdir(directory):
        return None
    found = [
        (int(m.group(1)), name) for name in os.listdir(directory) if (m := re.fullmatch(r"step-(\d+)\.ckpt", name))
    ]
    return os.path.join(directory, max(found)[1]) if found else None


# -- callbacks: any object with some of the hooks above -------------------------------------------------------------
class LinearWarmup:
    """Raises the learning rate linearly over the first ``steps`` optimizer steps."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_before_optimizer_step(self, trainer: Trainer, optimizer: torch.optim.Optimizer) -> None:
        scale = min(1.0, (trainer.global_step + 1) / self.steps)
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
            group["lr"] = group["base_lr"] * scale


class ValidationReport:
    """Prints the validation metrics (on rank zero) and remembers the best accuracy."""

    def __init__(self) -> None:
        self.best = 0.0

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.best = max(self.best, metrics["val_acc"])
        trainer.fabric.print(
            f"validation after epoch {trainer.epoch}: loss {metrics['val_loss']:.4f}, accuracy {metrics['val_acc']:.1%}"
        )


# -- the demonstration: uninterrupted vs stopped-and-resumed --------------------------------------------------------
def run(
    args: argparse.Namespace, name: str, max_steps: int | None, ckpt_path: str | None
) -> tuple[Trainer, FabricModule]:
    csv_logger, tensorboard = make_loggers(args.root_dir, "trainer_template")
    trainer = Trainer(
        max_epochs=args.epochs,
        max_steps=max_steps,
        grad_accum_steps=args.grad_accum,
        clip_grad_norm=1.0,
        log_every_n_steps=5,
        checkpoint_dir=os.path.join(args.root_dir, "checkpoints", name),
        checkpoint_every_n_steps=args.checkpoint_every,
        callbacks=[LinearWarmup(steps=10), ValidationReport()],
        loggers=[csv_logger, tensorboard],
    )
    trainer.fabric.seed_everything(42, verbose=False)  # the same data order and initial weights for every run
    task = Classifier(lr=args.lr)
    train = DataLoader(teacher_dataset(args.samples, seed=0), batch_size=args.batch_size, shuffle=True)
    val = DataLoader(teacher_dataset(args.samples // 4, seed=1), batch_size=256)
    trainer.fabric.print(f"-- {name} run ({trainer.fabric.world_size} process(es))")
    model = trainer.fit(task, train, val, ckpt_path=ckpt_path)
    draw_curves(trainer.fabric, csv_logger, [["train_loss", "val_loss"], ["val_acc"]], f"trainer template: {name} run")
    return trainer, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a short run (a few seconds of training per run)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--grad-accum", type=int, default=2, help="batches per optimizer step")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--checkpoint-every", type=int, default=20, help="optimizer steps between checkpoints")
    parser.add_argument("--root-dir", default="fabric_logs", help="logs and checkpoints go under this folder")
    args = parser.parse_args()
    args.epochs = args.epochs or (3 if args.fast else 10)
    args.samples = args.samples or (2048 if args.fast else 8192)

    start = time.perf_counter()
    full, full_model = run(args, "uninterrupted", max_steps=None, ckpt_path=None)
    halfway = full.global_step // 2 + 1  # an odd number of steps: stops in the middle of an epoch
    stopped, _ = run(args, "stopped", max_steps=halfway, ckpt_path=None)
    resumed, resumed_model = run(args, "resumed", max_steps=None, ckpt_path=stopped.last_checkpoint)

    same = all(torch.equal(a, b) for a, b in zip(full_model.state_dict().values(), resumed_model.state_dict().values()))
    fabric = resumed.fabric
    fabric.print(f"three runs in {time.perf_counter() - start:.1f}s; the resumed run continued from step {halfway}")
    if fabric.is_global_zero:
        print(
            f"final: validation accuracy {resumed.validation_metrics['val_acc']:.1%} after {resumed.global_step} steps;"
            f" resumed weights identical to uninterrupted: {same}"
        )


if __name__ == "__main__":
    main()
