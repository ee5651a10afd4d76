"""Count aborts at interpreter exit over many real two-process DDP training runs (not collected by pytest).

    python packages/fabric-strategies/tests/teardown_loop.py --runs 50 --mode fabric raw

Modes:
  fabric          DDPStrategy + SubprocessScriptLauncher, the script calls ``strategy.teardown()``
  fabric-atexit   the same, but the script never tears down: the strategy's exit hook does it
  fabric-user-destroy  the same, but the script ends with ``barrier()`` and ``destroy_process_group()`` of its own,
                  as plain PyTorch scripts do: the exit hook then releases the DDP wrappers that still hold the group
  raw             plain torch: two processes, gloo, DistributedDataParallel, ``destroy_process_group()`` at the end
                  (the baseline: with torch 2.13 + gloo some runs die with SIGABRT, "terminate called without an
                  active exception")

With ``--adversarial`` every thread of each process is pinned to one CPU and gloo's worker threads run under
SCHED_IDLE (only when nothing else wants the CPU), which widens the race behind the abort: a worker that finished the
last gradient all-reduce must still free it, and needs the GIL for that, when the main thread heads for exit.

A run counts as aborted when a process of it died of SIGABRT or printed "terminate called"; any other non-zero exit
counts as a failure. Exit status: 1 if a fabric mode had an abort or failure, else 0.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field

STARVE = textwrap.dedent(
    """
    import os

    def starve_gloo_workers():
        for tid in map(int, os.listdir("/proc/self/task")):
            try:
                os.sched_setaffinity(tid, {sorted(os.sched_getaffinity(0))[0]})
                with open(f"/proc/self/task/{tid}/comm") as f:
                    if f.read().strip() == "pt_gloo_runloop":
                        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            except OSError:
                pass

    ADVERSARIAL = os.environ.get("TEARDOWN_LOOP_ADVERSARIAL") == "1"
    """
)

FABRIC_SCRIPT = STARVE + textwrap.dedent(
    """
    import sys
    from datetime import timedelta
    import torch
    from fabric_strategies import DDPStrategy

    ending = sys.argv[1]
    strategy = DDPStrategy(parallel_devices=[torch.device("cpu")] * 2, timeout=timedelta(seconds=60))
    strategy.complete()

    def train():
        strategy.setup_environment()
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
        model = strategy.setup_module(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        if ADVERSARIAL:
            starve_gloo_workers()
        for _ in range(5):
            loss = model(torch.randn(8, 32)).sum()
            strategy.backward(loss, model)
            strategy.optimizer_step(optimizer)
            optimizer.zero_grad()
        if ending == "teardown":
            strategy.teardown()
        if ending == "user-destroy":
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
        return model  # the wrapper stays referenced until interpreter exit, as in a user's script

    launcher = strategy.launcher
    model = launcher.launch(train) if launcher is not None else train()
    """
)

RAW_SCRIPT = STARVE + textwrap.dedent(
    """
    from datetime import timedelta
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
    torch.manual_seed(0)
    model = DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    if ADVERSARIAL:
        starve_gloo_workers()
    for _ in range(5):
        loss = model(torch.randn(8, 32)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    dist.destroy_process_group()
    """
)

ABORT_MARKER = "terminate called"
SIGABRT_CODES = (-6, 134)


@dataclass
class Tally:
    runs: int = 0
    aborted_runs: int = 0
    failed_runs: int = 0
    notes: list[str] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_ADVERSARIAL = {"TEARDOWN_LOOP_ADVERSARIAL": "0"}


def _base_env() -> dict[str, str]:
    drop = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_PORT", "MASTER_ADDR", "GROUP_RANK")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **_ADVERSARIAL}


def _fabric_run(script: str, ending: str) -> list[tuple[int, str]]:
    """One run: the launcher re-runs the script for rank 1; the parent reports a child's abort as a failure."""
    proc = subprocess.run(
        [sys.executable, script, ending],
        capture_output=True,
        text=True,
        timeout=300,
        env=_base_env(),
    )
    return [(proc.returncode, proc.stderr)]


def _raw_run(script: str) -> list[tuple[int, str]]:
    env = {**_base_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    procs = [
        subprocess.Popen([sys.executable, script], env={**env, "RANK": str(rank)}, stderr=subprocess.PIPE, text=True)
        for rank in range(2)
    ]
    outcomes = []
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        outcomes.append((proc.returncode, stderr))
    return outcomes


def _classify(outcomes: list[tuple[int, str]], tally: Tally, index: int) -> None:
    tally.runs += 1
    aborted = any(code in SIGABRT_CODES or ABORT_MARKER in err or "SIGABRT" in err for code, err in outcomes)
    failed = not aborted and any(code != 0 for code, _ in outcomes)
    if aborted:
        tally.aborted_runs += 1
        tally.notes.append(f"run {index}: abort, exit codes {[code for code, _ in outcomes]}")
    elif failed:
        tally.failed_runs += 1
        tail = next(err for code, err in outcomes if code != 0).strip().splitlines()[-3:]
        tally.notes.append(f"run {index}: failure, exit codes {[code for code, _ in outcomes]}: {tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    modes = ("fabric", "fabric-atexit", "fabric-user-destroy", "raw")
    parser.add_argument("--mode", nargs="+", choices=modes, default=["fabric", "raw"])
    parser.add_argument("--adversarial", action="store_true", help="starve gloo's worker threads of CPU")
    args = parser.parse_args()
    _ADVERSARIAL["TEARDOWN_LOOP_ADVERSARIAL"] = "1" if args.adversarial else "0"
    tallies: dict[str, Tally] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fabric_script = os.path.join(tmp, "fabric_ddp.py")
        raw_script = os.path.join(tmp, "raw_ddp.py")
        with open(fabric_script, "w") as f:
            f.write(FABRIC_SCRIPT)
        with open(raw_script, "w") as f:
            f.write(RAW_SCRIPT)
        for mode in args.mode:
            tally = tallies[mode] = Tally()
            start = time.monotonic()
            for index in range(1, args.runs + 1):
                if mode == "raw":
                    outcomes = _raw_run(raw_script)
                else:
                    endings = {"fabric": "teardown", "fabric-atexit": "forget", "fabric-user-destroy": "user-destroy"}
                    outcomes = _fabric_run(fabric_script, endings[mode])
                _classify(outcomes, tally, index)
            label = f"{mode} (adversarial)" if args.adversarial else mode
            print(
                f"{label}: {tally.runs} runs, {tally.aborted_runs} aborted, {tally.failed_runs} other failures"
                f" ({time.monotonic() - start:.0f}s)",
                flush=True,
            )
            for note in tally.notes:
                print(f"  {note}", flush=True)
    fabric_bad = sum(t.aborted_runs + t.failed_runs for mode, t in tallies.items() if mode != "raw")
    return 1 if fabric_bad else 0


if __name__ == "__main__":
    sys.exit(main())
