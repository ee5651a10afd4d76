"""Checkpoint throughput: ``fabric.save``/``fabric.load`` against plain torch on the same state.

single-file (one process): ``torch.save``/``torch.load(weights_only=True)`` + ``load_state_dict`` against
``fabric.save``/``fabric.load`` of a model and its Adam state. Also ``torch.save`` followed by ``fsync`` against
fabric with ``TorchCheckpointIO(fsync=True)`` (the opt-in durable save: data and directory flushed to the device).

sharded (2 processes, gloo, FSDP2): ``torch.distributed.checkpoint`` save/load of ``get_state_dict`` against
``fabric.save``/``fabric.load`` with ``FSDPStrategy``.

stall / stall-sharded (one process; FSDP2 on 2 gloo processes): how long a 100 MB save holds training up,
``fabric.save`` against ``fabric.save(..., asynchronous=True)``. Three copies of the model train on the same batches,
one window of ``STALL_STEPS`` steps each per repetition (in rotating order): one saves nothing, one saves
synchronously and one asynchronously after step ``SAVE_AT``; the asynchronous one waits for its save at the end of
the window, inside the timing. A side's stall is its window minus the no-save window of the same repetition. The
copies end with identical weights, and the last checkpoints of both savers are compared entry by entry.

Each side alternates with the other inside the same process(es) (A B A B ..., who goes first alternates too, since
a save leaves dirty pages that the kernel writes back during the next one); the child writes its samples as JSON.
Run as ``python checkpoint_bench.py {single|sharded|stall|stall-sharded} REPS OUT_DIR``, or
``python checkpoint_bench.py stall-report [REPS]`` for both stall modes and a summary.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

WIDTH = 1024  # 8 linear layers of 1024x1024: 8.4M parameters, 34 MB of weights, ~100 MB with Adam's state


def checkpoint_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*(nn.Linear(WIDTH, WIDTH) for _ in range(8)))


def _train_one_step(model: nn.Module, optimizer: torch.optim.Optimizer, backward: Any = None) -> None:
    loss = model(torch.randn(4, WIDTH)).square().mean()
    (backward or torch.Tensor.backward)(loss)
    optimizer.step()
    optimizer.zero_grad()


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- single file -------------------------------------------------------------------------------------------------
def single(reps: int, work: Path) -> dict[str, Any]:
    from fabric_core import Fabric
    from fabric_io import TorchCheckpointIO

    torch.set_num_threads(1)
    model = checkpoint_model()
    optimizer = torch.optim.Adam(model.parameters())
    _train_one_step(model, optimizer)
    fabric = Fabric(accelerator="cpu", devices=1)
    fabric_model = checkpoint_model()
    fabric_model, fabric_optimizer = fabric.setup(fabric_model, torch.optim.Adam(fabric_model.parameters()))
    _train_one_step(fabric_model, fabric_optimizer, fabric.backward)
    durable = Fabric(accelerator="cpu", devices=1, plugins=[TorchCheckpointIO(fsync=True)])
    raw_path, fsync_path, fabric_path = work / "raw.pt", work / "raw_fsync.pt", work / "fabric.pt"
    fabric_fsync_path = work / "fabric_fsync.pt"

    def raw_save() -> None:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, raw_path)

    def raw_save_fsync() -> None:
        with open(fsync_path, "wb") as file:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, file)
            file.flush()
            os.fsync(file.fileno())

    def fabric_save() -> None:
        fabric.save(fabric_path, {"model": fabric_model, "optimizer": fabric_optimizer})

    def fabric_save_fsync() -> None:
        durable.save(fabric_fsync_path, {"model": fabric_model, "optimizer": fabric_optimizer})

    def raw_load() -> None:
        checkpoint = torch.load(raw_path, weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])

    def fabric_load() -> None:
        fabric.load(fabric_path, {"model": fabric_model, "optimizer": fabric_optimizer})

    samples: dict[str, list[float]] = {
        "torch save": [],
        "torch save+fsync": [],
        "fabric save": [],
        "fabric save fsync": [],
        "torch load": [],
        "fabric load": [],
    }
    saves = [
        (("torch save", raw_save), ("fabric save", fabric_save)),
        (("torch save+fsync", raw_save_fsync), ("fabric save fsync", fabric_save_fsync)),
    ]
    loads = [(("torch load", raw_load), ("fabric load", fabric_load))]
    # one untimed round first: the first saves into a fresh directory ran 2-4x slower here (on either side) while
    # the page cache and the disk's write-back settled, and every later save replaces an existing file, as in training
    for pair in (*saves, *loads):
        for _, fn in pair:
            fn()
    # a load from the page cache takes ~20 ms, where any hiccup of a shared machine shows: three times the pairs
    for pairs, count in ((saves, reps), (loads, 3 * reps)):
        for rep in range(count):
            for pair in pairs:
                for name, fn in pair if rep % 2 == 0 else reversed(pair):
                    samples[name].append(_timed(fn))
    sizes = {"torch": _size(raw_path), "fabric": _size(fabric_path)}
    return {"kind": "checkpoint", "reps": reps, "samples": samples, "bytes": sizes}


# -- sharded (FSDP) ----------------------------------------------------------------------------------------------
def sharded(reps: int, work: Path) -> dict[str, Any] | None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from fabric_core import Fabric

    torch.set_num_threads(1)
    fabric = Fabric(accelerator="cpu", devices=2, strategy="fsdp")
    fabric.launch()  # joins the group that the harness started (torchrun variables): the default process group
    rank = dist.get_rank()

    raw_model = checkpoint_model()
    fully_shard(raw_model, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
    raw_optimizer = torch.optim.Adam(raw_model.parameters())
    _train_one_step(raw_model, raw_optimizer)

    fabric_model = fabric.setup_module(checkpoint_model())
    fabric_optimizer = fabric.setup_optimizers(torch.optim.Adam(fabric_model.parameters()))
    _train_one_step(fabric_model, fabric_optimizer, fabric.backward)

    raw_dir, fabric_dir = work / "raw_sharded", work / "fabric_sharded"

    def fresh(path: Path) -> None:
        dist.barrier()
        if rank == 0 and path.exists():
            shutil.rmtree(path)
        dist.barrier()

    def raw_save() -> None:
        model_state, optimizer_state = get_state_dict(raw_model, raw_optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(raw_dir))
        dist.barrier()

    def raw_load() -> None:
        model_state, optimizer_state = get_state_dict(raw_model, raw_optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=str(raw_dir))
        set_state_dict(raw_model, raw_optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        dist.barrier()

    def fabric_save() -> None:
        fabric.save(fabric_dir, {"model": fabric_model, "optimizer": fabric_optimizer})

    def fabric_load() -> None:
        fabric.load(fabric_dir, {"model": fabric_model, "optimizer": fabric_optimizer})

    samples: dict[str, list[float]] = {"dcp save": [], "fabric save": [], "dcp load": [], "fabric load": []}
    for _ in range(reps):
        for name, path, fn in (("dcp save", raw_dir, raw_save), ("fabric save", fabric_dir, fabric_save)):
            fresh(path)
            samples[name].append(_timed(fn))
    for _ in range(reps):
        for name, fn in (("dcp load", raw_load), ("fabric load", fabric_load)):
            dist.barrier()
            samples[name].append(_timed(fn))
    sizes = {"torch": _size(raw_dir), "fabric": _size(fabric_dir)}
    fabric.strategy.teardown()
    if dist.is_initialized():
        dist.destroy_process_group()
    if rank != 0:
        return None
    return {"kind": "sharded", "reps": reps, "samples": samples, "bytes": sizes}


def main() -> None:
    if sys.argv[1] == "stall-report":
        from checkpoint_stall import report

        report(int(sys.argv[2]) if len(sys.argv) > 2 else 5)
        return
    mode, reps, out_dir = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    work = out_dir / "work"  # shared by the ranks: a sharded checkpoint is one directory written by all of them
    work.mkdir(exist_ok=True)
    if mode.startswith("stall"):
        from checkpoint_stall import stall

        result = stall(reps, work, sharded=mode == "stall-sharded")
    else:
        result = single(reps, work) if mode == "single" else sharded(reps, work)
    if result is not None:
        (out_dir / f"{mode}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
