"""Train with DDP on a Slurm allocation; when Slurm warns that the job will end, save and stop.

srun starts one task per device (``srun python train.py``, or ``sbatch job.sh``). Each run continues from the
checkpoint when there is one, so a requeued job picks up where the last one stopped and ends with the same weights as
an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_core import Fabric


def train(fabric: Fabric, args: argparse.Namespace) -> dict[str, Any]:
    fabric.seed_everything(42)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model, optimizer = fabric.setup(model, optimizer)
    data = TensorDataset(torch.randn(512, 8), torch.randn(512, 1))  # the same in every task (seeded)
    loader = fabric.setup_dataloaders(DataLoader(data, batch_size=16, shuffle=True))
    state = {"model": model, "optimizer": optimizer, "loader": loader, "step": 0}
    if os.path.exists(args.checkpoint):
        fabric.load(args.checkpoint, state)  # a requeued job: continue at the saved step and batch
    first_step, preempted = state["step"], False
    fabric.print(f"training from step {first_step}", flush=True)
    while state["step"] < args.steps and not preempted:
        for x, y in loader:
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            fabric.backward(loss)
            optimizer.step()
            time.sleep(args.step_time)  # stands for a longer step
            state["step"] += 1
            # True in every task once Slurm's signal reached any of them: all stop after the same step
            preempted = fabric.preempted
            if preempted or state["step"] == args.steps:
                break
    fabric.save(args.checkpoint, state)  # every task takes part; the file is written once
    fabric.print(f"{'preempted' if preempted else 'finished'}: saved step {state['step']}", flush=True)
    return {"first_step": first_step, "last_step": state["step"], "preempted": preempted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--step-time", type=float, default=0.0, help="seconds to sleep after each step")
    parser.add_argument("--devices", type=int, default=2, help="tasks per node: #SBATCH --ntasks-per-node")
    parser.add_argument("--checkpoint", default="checkpoints/last.ckpt")
    parser.add_argument("--report", default=None, help="a folder where each task describes its run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    fabric = Fabric(accelerator="cpu", devices=args.devices, strategy="ddp")
    fabric.launch()  # srun started every task: this joins them (and watches Slurm's SIGUSR1)
    result = train(fabric, args)
    if args.report is not None:
        report(fabric, args.report, result)


def report(fabric: Fabric, folder: str, result: dict[str, Any]) -> None:
    environment = fabric.strategy.cluster_environment
    attempt = os.environ.get("SLURM_RESTART_COUNT", "0")
    result.update(
        environment=type(environment).__name__,
        global_rank=fabric.global_rank,
        local_rank=fabric.local_rank,
        node_rank=fabric.node_rank,
        world_size=fabric.world_size,
        main_address=environment.main_address,
        main_port=environment.main_port,
        job_id=os.environ.get("SLURM_JOB_ID"),
        attempt=attempt,
    )
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"attempt{attempt}-rank{fabric.global_rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
