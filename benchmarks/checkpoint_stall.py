"""The training stall of a 100 MB save: ``fabric.save`` against ``fabric.save(..., asynchronous=True)``.

Run by ``checkpoint_bench.py stall|stall-sharded`` (see its docstring for the method); ``report`` runs both modes
through the harness and prints medians.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from checkpoint_bench import WIDTH, checkpoint_model
from torch import nn

STALL_STEPS = 12  # steps per window: long enough for a background save of 100 MB to end inside the window
SAVE_AT = 2  # the save follows this step
SIDES = ("none", "sync", "async")


def _batch(rep: int, step: int) -> torch.Tensor:
    return torch.randn(4, WIDTH, generator=torch.Generator().manual_seed(1000 * rep + step))


def stall(reps: int, work: Path, *, sharded: bool) -> dict[str, Any] | None:
    import torch.distributed as dist

    from fabric_core import Fabric

    torch.set_num_threads(1)
    fabric = Fabric(accelerator="cpu", devices=2, strategy="fsdp") if sharded else Fabric(accelerator="cpu", devices=1)
    fabric.launch()
    sides: dict[str, tuple[Any, Any]] = {}
    for side in SIDES:
        module = checkpoint_model()  # the same initial weights for every side
        sides[side] = fabric.setup(module, torch.optim.Adam(module.parameters()))
    paths = {side: work / f"stall-{side}" for side in SIDES}

    def sync_all() -> None:
        if sharded:
            dist.barrier()

    def window(side: str, rep: int) -> tuple[float, float, float, float, float, float]:
        model, optimizer = sides[side]
        sync_all()
        idle_before, cpu_before = _idle_jiffies(), time.process_time()
        start = time.perf_counter()
        call = 0.0
        handle = None
        for step in range(STALL_STEPS):
            fabric.backward(model(_batch(rep, step)).square().mean())
            optimizer.step()
            optimizer.zero_grad()
            if step == SAVE_AT and side != "none":
                called = time.perf_counter()
                handle = fabric.save(
                    paths[side], {"model": model, "optimizer": optimizer, "rep": rep}, asynchronous=side == "async"
                )
                call = time.perf_counter() - called
        waited = final = 0.0
        if handle is not None:
            ended = time.perf_counter()
            handle.wait()
            final = time.perf_counter() - ended  # the write not done by the end of the window
            waited = handle.waited  # training's wait for the deferred copy (in the next optimizer step)
        sync_all()
        elapsed = time.perf_counter() - start
        idle = _idle_share(idle_before, _idle_jiffies(), elapsed)
        return elapsed, call, time.process_time() - cpu_before, idle, waited, final

    samples: dict[str, list[float]] = {f"{side} {what}": [] for side in SIDES for what in ("window", "cpu", "idle")}
    samples.update({"sync call": [], "async call": [], "async waited": [], "async final wait": []})
    for rep in range(reps + 1):  # the first repetition is a warm-up (fresh files, first imports), not recorded
        order = SIDES[rep % 3 :] + SIDES[: rep % 3]
        for side in order:
            elapsed, call, cpu, idle, waited, final = window(side, rep)
            if rep:
                samples[f"{side} window"].append(elapsed)
                samples[f"{side} cpu"].append(cpu)
                samples[f"{side} idle"].append(idle)
                if side != "none":
                    samples[f"{side} call"].append(call)
                if side == "async":
                    samples["async waited"].append(waited)
                    samples["async final wait"].append(final)
    identical = _compare(fabric, sides, paths, sharded)
    if sharded:
        fabric.strategy.teardown()
        if dist.is_initialized():
            dist.destroy_process_group()
    if fabric.global_rank != 0:
        return None
    return {"kind": "stall", "sharded": sharded, "reps": reps, "samples": samples, **identical}


def _idle_jiffies() -> int:
    """The machine's idle CPU time so far (``/proc/stat``, all CPUs, in clock ticks); 0 where there is none."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return 0
    return int(fields[4]) + int(fields[5])  # idle + iowait


def _idle_share(before: int, after: int, elapsed: float) -> float:
    """The share of the machine's CPU time that was idle over ``elapsed`` seconds."""
    ticks = os.sysconf("SC_CLK_TCK") * elapsed * (os.cpu_count() or 1)
    return (after - before) / ticks if ticks else 0.0


def _compare(fabric: Any, sides: dict[str, tuple[Any, Any]], paths: dict[str, Path], sharded: bool) -> dict[str, bool]:
    """Whether the three copies ended with identical weights and both savers' last checkpoints hold the same."""
    weights = {side: _full_weights(model) for side, (model, _) in sides.items()}
    same_weights = all(_same(weights[side], weights["none"]) for side in SIDES)
    if sharded:
        from fabric_strategies import read_sharded_checkpoint

        saved = {side: read_sharded_checkpoint(paths[side]) for side in ("sync", "async")}
    else:
        saved = {side: torch.load(paths[side], weights_only=True) for side in ("sync", "async")}
    return {"same_final_weights": same_weights, "same_checkpoint": _same(saved["sync"], saved["async"])}


def _full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: value.full_tensor() if hasattr(value, "full_tensor") else value.detach().clone()
        for name, value in model.state_dict().items()
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def summarise(result: dict[str, Any]) -> dict[str, float]:
    """Medians (seconds) of the windows, the calls and the per-repetition stalls (window minus no-save window)."""
    samples = result["samples"]
    summary = {name: statistics.median(values) for name, values in samples.items()}
    for side in ("sync", "async"):
        stalls = [w - n for w, n in zip(samples[f"{side} window"], samples["none window"])]
        summary[f"{side} stall"] = statistics.median(stalls)
        cpu = [c - n for c, n in zip(samples[f"{side} cpu"], samples["none cpu"])]
        summary[f"{side} save cpu"] = statistics.median(cpu)
    summary["ratio"] = summary["async stall"] / summary["sync stall"]
    # what the training thread itself spends blocked by an asynchronous save: the call, then the wait for the copy
    blocked = [c + w for c, w in zip(samples["async call"], samples["async waited"])]
    summary["async blocked"] = statistics.median(blocked)
    summary["blocked ratio"] = summary["async blocked"] / summary["sync call"]
    return summary


def report(reps: int) -> None:
    from harness import run_checkpoint_child

    print(f"load average before: {os.getloadavg()}")
    for mode, world_size in (("stall", 1), ("stall-sharded", 2)):
        result = run_checkpoint_child(mode, reps, world_size, timeout=1800)
        summary = summarise(result)
        print(
            f"{mode}: sync stall {summary['sync stall'] * 1000:.0f} ms (call {summary['sync call'] * 1000:.0f} ms),"
            f" async stall {summary['async stall'] * 1000:.0f} ms (call {summary['async call'] * 1000:.0f} ms),"
            f" ratio {summary['ratio']:.1%}; async blocked (call + wait for the copy)"
            f" {summary['async blocked'] * 1000:.1f} ms = {summary['blocked ratio']:.1%} of the sync call;"
            f" no-save window {summary['none window']:.2f} s;"
            f" save CPU (rank 0) sync {summary['sync save cpu'] * 1000:.0f} ms, async"
            f" {summary['async save cpu'] * 1000:.0f} ms; idle CPU share {summary['none idle']:.1%};"
            f" same final weights {result['same_final_weights']}, same checkpoint {result['same_checkpoint']}"
        )
        print("  samples:", {k: [round(v, 3) for v in vs] for k, vs in result["samples"].items()})
    print(f"load average after: {os.getloadavg()}")
