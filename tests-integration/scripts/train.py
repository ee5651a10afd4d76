"""The training run the integration tests start for real: a tiny model, shuffled data, Adam, checkpoints, faults.

Started three ways (``--mode``):

- ``launch``: ``Fabric(...)`` with explicit flags, then ``fabric.launch()`` (the ``ddp``/``fsdp`` launchers run this
  script again for the other processes);
- ``spawn``: ``fabric.launch(main)`` with a ``ddp_spawn``-style strategy (the function runs in spawned processes);
- ``run``: ``Fabric()`` without flags, under ``fabric run`` (the choices arrive as ``FABRIC_*`` variables).

What each process does: seeds everything, trains ``--steps`` optimizer steps over 64 labelled samples in batches of
8 (``shuffle=True``, sharded across processes), optionally resumes from ``--ckpt`` first, saves ``--ckpt`` every
``--save-every`` steps, stops after ``--stop-at`` steps (saving first), and injects ``--fail RANK:STEP:KIND``
(``raise``, ``sigkill``, ``exit`` or ``hang``) after the forward pass of that step. Global rank 0 writes the final full
weights, the losses and the gradient scaler's scale to ``--out``. Every process records its pid (and start time) in
``--pid-dir`` so a test can prove that none outlives the run.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from datetime import timedelta
from typing import Any

import torch
from torch.utils.data import DataLoader

from fabric_core import Fabric
from fabric_precision import FSDPPrecision, MixedPrecision
from fabric_strategies import DDPStrategy, FSDPStrategy
from fabric_testing import RandomLabelledDataset, TinyMLP

SEED = 1234
FAILURE_MESSAGE = "injected failure for the integration test"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=("launch", "spawn", "run"), default="launch")
    parser.add_argument("--strategy", default="auto", help="a registered name; with --timeout: ddp, ddp_spawn, fsdp")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--eager-scaler", action="store_true", help="16-mixed whose GradScaler changes every step")
    parser.add_argument("--timeout", type=float, default=None, help="process-group timeout in seconds")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes per rank")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--stop-at", type=int, default=None)
    parser.add_argument("--save-every", type=int, default=None)
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--resume", action="store_true", help="load --ckpt first when it exists")
    parser.add_argument("--fail", default=None, metavar="RANK:STEP:KIND")
    parser.add_argument("--fail-once", action="store_true", help="fail only in the first attempt of `fabric run`")
    parser.add_argument("--out", default=None)
    parser.add_argument("--pid-dir", default=None)
    return parser.parse_args(argv)


def make_strategy(args: argparse.Namespace) -> Any:
    """A strategy instance when a short process-group timeout is asked for, the registry name otherwise."""
    if args.timeout is None:
        return args.strategy
    timeout = timedelta(seconds=args.timeout)
    if args.strategy in ("ddp", "ddp_spawn"):
        return DDPStrategy(timeout=timeout, start_method="spawn" if args.strategy == "ddp_spawn" else "popen")
    if args.strategy == "fsdp":
        return FSDPStrategy(timeout=timeout)
    raise SystemExit(f"--timeout needs --strategy ddp, ddp_spawn or fsdp, got {args.strategy!r}")


def eager_scaler_plugin(strategy: str) -> Any:
    """16-mixed with a GradScaler that doubles its scale every step: it soon overflows float16, skips steps and
    halves the scale again, so a resumed run must restore the scaler's state to match an uninterrupted one."""
    options = {"init_scale": 2.0**12, "growth_interval": 1}
    if strategy.startswith("fsdp"):
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return FSDPPrecision("16-mixed", scaler=ShardedGradScaler(device="cpu", **options))
    return MixedPrecision("16-mixed", scaler=torch.amp.GradScaler("cpu", **options))


def make_fabric(args: argparse.Namespace) -> Fabric:
    options: dict[str, Any] = {}
    if args.eager_scaler:
        options["plugins"] = eager_scaler_plugin(args.strategy)
    if args.mode == "run":
        # everything else comes from `fabric run` (FABRIC_* variables), except a strategy object for a short timeout
        if args.timeout is not None:
            options["strategy"] = make_strategy(args)
        return Fabric(**options)
    if not args.eager_scaler:
        options["precision"] = args.precision
    return Fabric(accelerator="cpu", devices=args.devices, strategy=make_strategy(args), **options)


def record_pid(pid_dir: str | None, rank: int) -> None:
    if pid_dir is None:
        return
    with open("/proc/self/stat") as f:
        start_time = f.read().rsplit(")", 1)[1].split()[19]
    path = os.path.join(pid_dir, f"rank{rank}-{os.getpid()}")
    with open(path, "w") as f:
        f.write(f"{os.getpid()} {start_time}\n")


def fail(kind: str, pid_dir: str | None) -> None:
    if pid_dir is not None:
        with open(os.path.join(pid_dir, "fail-time"), "w") as f:
            f.write(repr(time.time()))
    sys.stdout.flush()
    sys.stderr.flush()
    if kind == "raise":
        raise RuntimeError(FAILURE_MESSAGE)
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "exit":
        sys.exit(3)  # no exception: no excepthook runs, only the exit handlers
    if kind == "hang":
        time.sleep(600)  # stuck outside any collective: the other ranks wait for this one in theirs
    raise SystemExit(f"unknown failure kind {kind!r}")


def should_fail(args: argparse.Namespace, rank: int, step: int) -> str | None:
    if args.fail is None:
        return None
    fail_rank, fail_step, kind = args.fail.split(":")
    if int(fail_rank) != rank or int(fail_step) != step:
        return None
    if args.fail_once and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return None
    return kind


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, unsharded (collective for FSDP's DTensors), on the CPU."""
    weights = {}
    for name, value in model.state_dict().items():
        if hasattr(value, "full_tensor"):
            value = value.full_tensor()
        weights[name] = value.detach().cpu().clone()
    return weights


def main(fabric: Fabric, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)  # bit-identical results do not depend on how many threads a launcher allows
    record_pid(args.pid_dir, fabric.global_rank)
    fabric.seed_everything(SEED, verbose=False)
    model = TinyMLP(32, 64, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model, optimizer = fabric.setup(model, optimizer)
    dataset = RandomLabelledDataset(32, 64, 2, seed=7)
    loader = fabric.setup_dataloaders(DataLoader(dataset, batch_size=8, shuffle=True, num_workers=args.workers))
    state: dict[str, Any] = {
        "model": model,
        "optimizer": optimizer,
        "loader": loader,
        "precision": fabric.strategy.precision,
        "step": 0,
    }
    if args.resume and args.ckpt is not None and os.path.exists(args.ckpt):
        fabric.load(args.ckpt, state)
        fabric.print(f"resumed from {args.ckpt} at step {state['step']}", flush=True)
    step = state["step"]
    losses: list[float] = []
    while step < args.steps:
        for x, y in loader:
            output = model(x)
            loss = torch.nn.functional.cross_entropy(output, y)
            kind = should_fail(args, fabric.global_rank, step + 1)
            if kind is not None:
                fail(kind, args.pid_dir)
            optimizer.zero_grad()
            fabric.backward(loss)
            optimizer.step()
            step += 1
            losses.append(loss.item())
            if (args.save_every and step % args.save_every == 0) or step == args.stop_at:
                state["step"] = step
                fabric.save(args.ckpt, state)
            if step == args.stop_at:
                fabric.print(f"stopped after step {step}", flush=True)
                return
            if step >= args.steps:
                break
    weights = full_weights(model)
    scaler = getattr(fabric.strategy.precision, "scaler", None)
    if fabric.global_rank == 0 and args.out is not None:
        scale = None if scaler is None else float(scaler.get_scale())
        torch.save({"weights": weights, "losses": losses, "scale": scale}, args.out)
    fabric.print(f"finished {step} steps", flush=True)


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    fabric = make_fabric(arguments)
    if arguments.mode == "spawn":
        fabric.launch(main, arguments)
    else:
        fabric.launch()
        main(fabric, arguments)
