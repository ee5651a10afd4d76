"""One process of a multi-node run started by ``fabric run --num-nodes N --node-rank K`` (several commands, one host).

Every process builds ``Fabric()`` from the ``FABRIC_*`` variables that ``fabric run`` sets, then:

- records its ranks (global, local, node, world size) and the ``GROUP_RANK`` torchrun gave its node;
- runs the collectives: ``all_reduce`` (sum of ranks), ``all_gather`` (every rank), ``broadcast`` from the last rank;
- trains ``--steps`` SGD steps of a tiny model with DDP on a shuffled, index-labelled dataset through
  ``setup_dataloaders``, recording the indices of each epoch's samples it saw and of every step's global batch (so the
  test can check the weights against one process training on those batches);
- saves a checkpoint with ``fabric.save``, loads it into a new model and optimizer, and records whether the loaded
  weights equal the trained ones;
- can fail on purpose: ``--fail RANK:STEP:raise|sigkill`` after the forward pass of that step (``--fail-once``: only
  in the first attempt of ``fabric run --max-restarts``), and with ``--resume`` starts from ``--ckpt`` if it exists.

Each process writes ``rank<R>.json`` to ``--out-dir``, and its pid and start time to ``--pid-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fabric_core import Fabric

FAILURE_MESSAGE = "injected failure on purpose"
SAMPLES, FEATURES, BATCH_SIZE = 32, 4, 2  # 4 ranks x 2 = a global batch of 8: 4 steps per epoch


class IndexedDataset(Dataset):  # type: ignore[type-arg]
    """``(index, x, y)`` rows: the index tells the test which samples each rank saw."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(11)
        self.x = torch.randn(SAMPLES, FEATURES, generator=generator)
        self.y = torch.randn(SAMPLES, 1, generator=generator)

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        return index, self.x[index], self.y[index]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, 8), nn.Tanh(), nn.Linear(8, 1))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--pid-dir", default=None)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--save-every", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--fail", default=None, metavar="RANK:STEP:KIND")
    parser.add_argument("--fail-once", action="store_true")
    parser.add_argument("--step-delay", type=float, default=0.0, help="seconds to sleep after each step")
    return parser.parse_args(argv)


def record_pid(pid_dir: str | None, rank: int) -> None:
    if pid_dir is None:
        return
    with open("/proc/self/stat") as f:
        start_time = f.read().rsplit(")", 1)[1].split()[19]
    with open(os.path.join(pid_dir, f"rank{rank}-{os.getpid()}"), "w") as f:
        f.write(f"{os.getpid()} {start_time}\n")


def maybe_fail(args: argparse.Namespace, rank: int, step: int) -> None:
    if args.fail is None:
        return
    fail_rank, fail_step, kind = args.fail.split(":")
    if int(fail_rank) != rank or int(fail_step) != step:
        return
    if args.fail_once and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    if args.pid_dir is not None:
        with open(os.path.join(args.pid_dir, "fail-time"), "w") as f:
            f.write(repr(time.time()))
    sys.stdout.flush()
    if kind == "raise":
        raise RuntimeError(FAILURE_MESSAGE)
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise SystemExit(f"unknown failure kind {kind!r}")


def collectives(fabric: Fabric) -> dict[str, Any]:
    rank = fabric.global_rank
    total = fabric.all_reduce(torch.tensor(float(rank)), reduce_op="sum")
    gathered = fabric.all_gather(torch.tensor([rank]))
    message = fabric.broadcast({"from": rank, "payload": [rank] * 3}, src=fabric.world_size - 1)
    fabric.barrier()
    return {"all_reduce_sum": total.item(), "all_gather": gathered.flatten().tolist(), "broadcast": message}


def train(fabric: Fabric, args: argparse.Namespace, record: dict[str, Any]) -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    loader = fabric.setup_dataloaders(DataLoader(IndexedDataset(), batch_size=BATCH_SIZE, shuffle=True))
    # the sample indices of every step's global batch (all ranks'), checkpointed too: a resumed run knows those of the
    # steps before the resume
    state: dict[str, Any] = {"model": model, "optimizer": optimizer, "loader": loader, "step": 0, "global_batches": []}
    if args.resume and args.ckpt is not None and os.path.exists(args.ckpt):
        fabric.load(args.ckpt, state)
        fabric.print(f"resumed from step {state['step']}", flush=True)
    record["first_step"] = state["step"]
    step = state["step"]
    global_batches: list[list[int]] = state["global_batches"]
    epochs: list[list[int]] = []
    while step < args.steps:
        epoch: list[int] = []
        for index, x, y in loader:
            loss = nn.functional.mse_loss(model(x), y)
            maybe_fail(args, fabric.global_rank, step + 1)
            optimizer.zero_grad()
            fabric.backward(loss)
            optimizer.step()
            step += 1
            global_batches.append(fabric.all_gather(index).flatten().tolist())
            epoch += index.tolist()
            if args.save_every and step % args.save_every == 0:
                state["step"] = step
                fabric.save(args.ckpt, state)
            time.sleep(args.step_delay)
            if step >= args.steps:
                break
        epochs.append(epoch)
    record["global_batches"] = global_batches
    record["epochs"] = epochs
    record["weights"] = {name: value.tolist() for name, value in model.state_dict().items()}
    if args.ckpt is not None:
        state["step"] = step
        fabric.save(args.ckpt, state)
        fresh = fabric.setup(make_model())
        fresh_optimizer = fabric.setup_optimizers(torch.optim.SGD(fresh.parameters(), lr=0.1))
        loaded: dict[str, Any] = {"model": fresh, "optimizer": fresh_optimizer, "step": -1}
        fabric.load(args.ckpt, loaded, strict=False)
        same = all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters(), strict=True))
        record["loaded_step"] = loaded["step"]
        record["loaded_equal"] = same
        record["loaded_optimizer_groups"] = len(fresh_optimizer.param_groups)


def main() -> None:
    args = parse_args(sys.argv[1:])
    torch.set_num_threads(1)
    fabric = Fabric()
    fabric.launch()
    record_pid(args.pid_dir, fabric.global_rank)
    record: dict[str, Any] = {
        "global_rank": fabric.global_rank,
        "local_rank": fabric.local_rank,
        "node_rank": fabric.node_rank,
        "world_size": fabric.world_size,
        "group_rank": int(os.environ["GROUP_RANK"]),
        "restart_count": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
        "strategy": type(fabric.strategy).__name__,
    }
    record.update(collectives(fabric))
    train(fabric, args, record)
    with open(os.path.join(args.out_dir, f"rank{fabric.global_rank}.json"), "w") as f:
        json.dump(record, f)
    fabric.print(f"finished {args.steps} steps", flush=True)


if __name__ == "__main__":
    main()
