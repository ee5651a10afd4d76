"""Where fabric's per-step overhead goes: each hot path timed against its raw PyTorch counterpart, in one process.

    python benchmarks/profile_hot_paths.py            # the table of per-call costs
    python benchmarks/profile_hot_paths.py --cprofile # also the functions fabric adds to a training step

Each pair (raw call, fabric call) is timed in alternating blocks of many calls; a block's cost per call is its CPU
time divided by the calls, and the reported figure is the minimum over the blocks (the block least disturbed by
other processes), as ``timeit`` does. The difference is fabric's cost per call. The Python function calls per training
step, counted by ``cProfile``, do not depend on the machine's load at all.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils.data import DataLoader
from workloads import tiny_mlp

BATCH = 16


def per_call(fn: Callable[[], Any], calls: int) -> float:
    """CPU seconds per call over ``calls`` calls (CPU time: time spent descheduled by other processes is left out)."""
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls


def compare(raw: Callable[[], Any], fabric: Callable[[], Any], calls: int, blocks: int) -> tuple[float, float]:
    """Best per-call time of each side over alternating blocks."""
    raw_times, fabric_times = [], []
    for block in range(blocks):
        order = ((raw, raw_times), (fabric, fabric_times))
        for fn, times in order if block % 2 == 0 else reversed(order):
            times.append(per_call(fn, calls))
    return min(raw_times), min(fabric_times)


def _fabric(precision: str) -> Any:
    from fabric_core import Fabric

    return Fabric(accelerator="cpu", devices=1, precision=precision)


def hot_paths(precision: str, calls: int, blocks: int) -> list[tuple[str, float, float]]:
    """(path, raw seconds per call, fabric seconds per call) for each hot path of one precision."""
    fabric = _fabric(precision)
    torch.manual_seed(0)
    model = tiny_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    wrapped = tiny_mlp()
    wrapped_model, wrapped_optimizer = fabric.setup(wrapped, torch.optim.Adam(wrapped.parameters(), lr=1e-3))
    x, y = torch.randn(BATCH, 32), torch.randint(0, 10, (BATCH,))
    autocast = precision.endswith("-mixed")
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16

    def raw_forward() -> torch.Tensor:
        if autocast:
            with torch.autocast("cpu", dtype=dtype):
                out = model(x)
            return out.float()
        return model(x)

    def fabric_forward() -> torch.Tensor:
        return wrapped_model(x)

    # backward on a fresh one-op graph: what is measured is the Python around `Tensor.backward`
    leaf = torch.ones(4, requires_grad=True)

    def raw_backward() -> None:
        (leaf * 2).sum().backward()

    def fabric_backward() -> None:
        fabric.backward((leaf * 2).sum())

    for p in (*model.parameters(), *wrapped.parameters()):
        p.grad = torch.zeros_like(p)
    loader = DataLoader(torch.utils.data.TensorDataset(torch.randn(BATCH * 64, 32)), batch_size=BATCH)
    fabric_loader = fabric.setup_dataloaders(
        DataLoader(torch.utils.data.TensorDataset(torch.randn(BATCH * 64, 32)), batch_size=BATCH)
    )

    def drain(iterable: Any) -> Callable[[], None]:
        def run() -> None:
            for _ in iterable:
                pass

        return run

    def raw_step() -> None:
        optimizer.zero_grad()
        out = raw_forward()
        F.cross_entropy(out, y).backward()
        optimizer.step()

    def fabric_step() -> None:
        wrapped_optimizer.zero_grad()
        out = fabric_forward()
        fabric.backward(F.cross_entropy(out, y))
        wrapped_optimizer.step()

    rows = []
    for name, raw, fab, factor in (
        ("forward (wrapped module call)", raw_forward, fabric_forward, 1),
        ("backward (fabric.backward)", raw_backward, fabric_backward, 1),
        ("optimizer.step", optimizer.step, wrapped_optimizer.step, 1),
        ("optimizer.zero_grad", optimizer.zero_grad, wrapped_optimizer.zero_grad, 1),
        ("dataloader, per batch (64 batches)", drain(loader), drain(fabric_loader), 64),
        ("whole training step (MLP)", raw_step, fabric_step, 1),
    ):
        for p in (*model.parameters(), *wrapped.parameters()):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        n = max(1, calls // factor)
        raw_s, fabric_s = compare(raw, fab, n, blocks)
        rows.append((name, raw_s / factor, fabric_s / factor))
    return rows


def call_counts(precision: str, steps: int = 200) -> tuple[float, float, list[tuple[str, int]]]:
    """Python function calls per training step (raw, fabric) and the functions only the fabric step calls."""
    fabric = _fabric(precision)
    results = []
    for use_fabric in (False, True):
        torch.manual_seed(0)
        model = tiny_mlp()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loader = DataLoader(torch.utils.data.TensorDataset(torch.randn(steps * BATCH, 32)), batch_size=BATCH)
        autocast = precision.endswith("-mixed") and not use_fabric
        if use_fabric:
            model, optimizer = fabric.setup(model, optimizer)
            loader = fabric.setup_dataloaders(loader)
        y = torch.randint(0, 10, (BATCH,))
        profiler = cProfile.Profile()
        profiler.enable()
        for (x,) in loader:
            optimizer.zero_grad()
            if autocast:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = model(x)
                out = out.float()
            else:
                out = model(x)
            loss = F.cross_entropy(out, y)
            fabric.backward(loss) if use_fabric else loss.backward()
            optimizer.step()
        profiler.disable()
        stats = pstats.Stats(profiler)
        per_function = {
            f"{os.path.basename(path)}:{line}({name})": value[1]
            for (path, line, name), value in stats.stats.items()  # type: ignore[attr-defined]
        }
        results.append((stats.total_calls / steps, per_function))  # type: ignore[attr-defined]
    (raw_calls, raw_functions), (fabric_calls, fabric_functions) = results
    extra = [
        (name, round((count - raw_functions.get(name, 0)) / steps))
        for name, count in fabric_functions.items()
        if count - raw_functions.get(name, 0) >= steps
    ]
    extra.sort(key=lambda item: -item[1])
    return raw_calls, fabric_calls, extra


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cprofile", action="store_true", help="list the functions fabric adds per step")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    calls, blocks = (100, 15) if args.quick else (100, 60)
    print("| hot path | precision | raw torch per call | fabric per call | fabric's cost per call |")
    print("|---|---|---|---|---|")
    for precision in ("32-true", "bf16-mixed"):
        for name, raw_s, fabric_s in hot_paths(precision, calls, blocks):
            delta = fabric_s - raw_s
            print(f"| {name} | {precision} | {raw_s * 1e6:.1f} µs | {fabric_s * 1e6:.1f} µs | {delta * 1e6:+.1f} µs |")
    print()
    print("| precision | Python calls per step, raw | with fabric | functions fabric adds (calls per step) |")
    print("|---|---|---|---|")
    for precision in ("32-true", "bf16-mixed"):
        raw_calls, fabric_calls, extra = call_counts(precision)
        listed = ", ".join(f"`{name}` x{count}" for name, count in extra[:12])
        print(f"| {precision} | {raw_calls:.0f} | {fabric_calls:.0f} | {listed} |")
    if args.cprofile:
        for precision in ("32-true", "bf16-mixed"):
            print(f"\n{precision}: every function the fabric step calls more often than the raw step")
            for name, count in call_counts(precision)[2]:
                print(f"  {count:4d}  {name}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
