"""The job that the launch benchmark starts: join a 2-process gloo group, pass one barrier, exit cleanly.

``python launch_target.py torch`` does it with ``torch.distributed``; ``python launch_target.py fabric`` with
``Fabric().launch()`` (the flags come from ``fabric run``).
"""

from __future__ import annotations

import sys


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


if __name__ == "__main__":
    {"torch": with_torch, "fabric": with_fabric}[sys.argv[1]]()
