"""The job that the launch benchmark starts: 2 processes join a gloo group, pass one barrier and exit cleanly.

Started by a launcher (the flags of ``fabric run`` reach ``Fabric()`` through the environment):

- ``python launch_target.py torch``: ``torch.distributed`` (under ``torchrun`` or ``fabric run``);
- ``python launch_target.py fabric``: ``Fabric().launch()``, which joins the processes the launcher started.

Starting the processes itself (``MASTER_ADDR``/``MASTER_PORT`` come from the environment):

- ``spawn-torch``: ``torch.multiprocessing.spawn`` of 2 processes, each calling ``init_process_group("gloo")``;
- ``spawn-fabric``: ``Fabric(strategy="ddp_spawn", devices=2).launch(function)`` (fabric's multiprocessing launcher);
- ``script-fabric``: ``Fabric(strategy="ddp", devices=2).launch()`` (this script runs again as local rank 1).
"""

from __future__ import annotations

import sys
from typing import Any


def with_torch() -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    dist.barrier()
    dist.destroy_process_group()


def with_fabric() -> None:
    from fabric_core import Fabric

    fabric = Fabric()
    fabric.launch()
    fabric.barrier()
    fabric.strategy.teardown()


def _spawned_torch_process(rank: int, world_size: int) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    dist.barrier()
    dist.destroy_process_group()


def spawn_torch() -> None:
    import torch.multiprocessing as mp

    mp.spawn(_spawned_torch_process, args=(2,), nprocs=2)


def _barrier(fabric: Any) -> None:
    fabric.barrier()


def spawn_fabric() -> None:
    from fabric_core import Fabric

    Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn").launch(_barrier)


def script_fabric() -> None:
    from fabric_core import Fabric

    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    fabric.launch()
    fabric.barrier()
    fabric.strategy.teardown()


JOBS = {
    "torch": with_torch,
    "fabric": with_fabric,
    "spawn-torch": spawn_torch,
    "spawn-fabric": spawn_fabric,
    "script-fabric": script_fabric,
}

if __name__ == "__main__":
    JOBS[sys.argv[1]]()
