"""A task started by srun: reports what ``detect_environment()`` reads and joins a gloo group at its address.

Writes ``<report dir>/rank<SLURM_PROCID>.json``. With ``--requeue``, global rank 0 then requeues the job through
``SLURMEnvironment.requeue()`` (a real ``scontrol requeue``).
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from fabric_environments import SLURMEnvironment, detect_environment

parser = argparse.ArgumentParser()
parser.add_argument("report_dir")
parser.add_argument("--devices", type=int, required=True)
parser.add_argument("--requeue", action="store_true")
args = parser.parse_args()

env = detect_environment()
env.validate_ranks()
env.validate_settings(num_devices=args.devices, num_nodes=1)
rank, world_size = env.global_rank(), env.world_size()
dist.init_process_group(
    "gloo",
    init_method=f"tcp://{env.main_address}:{env.main_port}",
    rank=rank,
    world_size=world_size,
    timeout=timedelta(seconds=60),
)
total = torch.tensor(rank)
dist.all_reduce(total)
report = {
    "environment": type(env).__name__,
    "global_rank": rank,
    "local_rank": env.local_rank(),
    "node_rank": env.node_rank(),
    "world_size": world_size,
    "main_address": env.main_address,
    "main_port": env.main_port,
    "job_id": SLURMEnvironment.job_id(),
    "creates_processes_externally": env.creates_processes_externally,
    "preemption_signals": [int(s) for s in env.preemption_signals()],
    "sum_of_ranks": int(total),
    "restarts": os.environ.get("SLURM_RESTART_COUNT"),
}
with open(os.path.join(args.report_dir, f"rank{rank}-restart{report['restarts']}.json"), "w") as f:
    json.dump(report, f)
dist.barrier()  # every report is written before rank 0 requeues the job (which stops the tasks)
dist.destroy_process_group()
if args.requeue and isinstance(env, SLURMEnvironment) and rank == 0 and report["restarts"] is None:
    assert env.requeue(), "scontrol requeue failed"
