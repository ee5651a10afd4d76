"""Count hangs and aborts at exit over many ``torchrun --nproc_per_node 2`` DDP runs, per way a script can end.

    nice -n 10 python packages/fabric-strategies/tests/exit_endings_loop.py --runs 30 --busy 3

(not collected by pytest). Each run trains a tiny MLP with ``Fabric(accelerator="cpu", devices=2, strategy="ddp")``
(or plain PyTorch: DistributedDataParallel + DistributedSampler) and then ends in one of the ways users write:

  destroy    ``torch.distributed.barrier()`` then ``torch.distributed.destroy_process_group()`` in the script
  barrier    only ``torch.distributed.barrier()``
  nothing    the script just ends (Fabric's exit hook tears down)
  sys-exit   rank 1 calls ``sys.exit(0)`` right after training; rank 0 prints, then ends a moment later
  destroy-in-atexit  the script registers ``atexit.register(dist.destroy_process_group)`` before anything else

``--busy N`` keeps N extra processes spinning on the CPUs during the loop (oversubscription widens the races at
exit). A run that has not ended after ``--watchdog`` seconds is a hang: every rank's Python and native stacks are
dumped (py-spy and gdb, where installed, and faulthandler through SIGUSR1) into ``--stacks-dir`` before torchrun is
killed.
A run whose torchrun exits non-zero, or whose output says "terminate called", is an abort; one that exits 0 but printed
a traceback (e.g. "Exception ignored in atexit callback") or no result is an error.
Exit status: 1 if a fabric variant had a hang, an abort or an error, else 0.

Counts of 2026-12-07 (issue #20), 100 runs per variant, ``--steps 100 --watchdog 120``, on a 2-core machine whose load
average stayed between 12 and 32 (three loops side by side with ``--busy 3``, ``--busy 1`` and ``--busy 0``, plus
other test runs):

  fabric destroy            100 ok, 0 hang, 0 abort, 0 error
  fabric barrier            100 ok, 0 hang, 0 abort, 0 error
  fabric nothing            100 ok, 0 hang, 0 abort, 0 error
  fabric sys-exit           100 ok, 0 hang, 0 abort, 0 error
  fabric destroy-in-atexit  100 ok, 0 hang, 0 abort, 0 error   (before the fix: "Process group cannot be None")
  raw destroy               100 ok, 0 hang, 0 abort, 0 error   (an earlier 30-run loop: 28 ok, 2 SIGABRT)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ENDINGS = ("destroy", "barrier", "nothing", "sys-exit", "destroy-in-atexit")

PRELUDE = textwrap.dedent(
    """
    import atexit, faulthandler, os, signal, sys, time
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    with open(os.path.join(os.environ["LOOP_PID_DIR"], os.environ["RANK"]), "w") as f:
        f.write(str(os.getpid()))
    ending, steps = sys.argv[1], int(sys.argv[2])
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, TensorDataset
    if ending == "destroy-in-atexit":
        atexit.register(dist.destroy_process_group)  # an exit handler of the script, registered first
    torch.manual_seed(0)
    dataset = TensorDataset(torch.randn(256, 16), torch.randn(256, 1))
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    """
)

FABRIC_TRAIN = textwrap.dedent(
    """
    from fabric_core import Fabric
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    fabric.launch()
    model, optimizer = fabric.setup(model, optimizer)
    loader = fabric.setup_dataloaders(DataLoader(dataset, batch_size=8, shuffle=True))
    rank, step = fabric.global_rank, 0
    while step < steps:
        for x, y in loader:
            loss = torch.nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            fabric.backward(loss)
            optimizer.step()
            step += 1
            if step == steps:
                break
    """
)

RAW_TRAIN = textwrap.dedent(
    """
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DistributedSampler
    dist.init_process_group("gloo")
    rank, step = dist.get_rank(), 0
    model = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sampler = DistributedSampler(dataset, shuffle=True)
    loader = DataLoader(dataset, batch_size=8, sampler=sampler)
    epoch = 0
    while step < steps:
        sampler.set_epoch(epoch)
        epoch += 1
        for x, y in loader:
            loss = torch.nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == steps:
                break
    """
)

ENDING = textwrap.dedent(
    """
    if ending == "sys-exit" and rank == 1:
        sys.exit(0)
    if rank == 0:
        print(f"rank 0 done: loss {loss.item():.4f}", flush=True)
    if ending in ("destroy", "barrier"):
        dist.barrier()
    if ending == "destroy":
        dist.destroy_process_group()
    if ending == "sys-exit":
        time.sleep(0.2)
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _dump_stacks(pid_dir: Path, out: Path) -> None:
    """Write every rank's stacks to ``out``: py-spy (Python threads, with their native frames) and gdb (every thread,
    gloo's workers included), where installed; ask each rank for a faulthandler dump too."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    gdb = shutil.which("gdb")
    with out.open("w") as f:
        for pid_file in sorted(pid_dir.iterdir()):
            pid = int(pid_file.read_text())
            f.write(f"==== rank {pid_file.name} (pid {pid}) ====\n")
            f.flush()
            if os.path.exists(py_spy):
                subprocess.run([py_spy, "dump", "--native", "--pid", str(pid)], stdout=f, stderr=f, timeout=60)
            if gdb is not None:
                command = [gdb, "-p", str(pid), "-batch", "-ex", "thread apply all bt"]
                subprocess.run(command, stdout=f, stderr=subprocess.DEVNULL, timeout=120)
            try:
                os.kill(pid, signal.SIGUSR1)  # faulthandler writes to the rank's stderr (the run's output)
            except ProcessLookupError:
                f.write("(already gone)\n")
    time.sleep(1.0)


@dataclass(frozen=True)
class Settings:
    steps: int
    watchdog: float
    run_nice: int
    stacks_dir: Path


def _one_run(script: Path, ending: str, work: Path, settings: Settings, index: int) -> tuple[str, str]:
    """Start one torchrun job; return its outcome (ok, hang, abort or error) and a note for the report."""
    pid_dir = work / "pids"
    shutil.rmtree(pid_dir, ignore_errors=True)
    pid_dir.mkdir(parents=True)
    drop = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_PORT", "MASTER_ADDR", "GROUP_RANK")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("FABRIC_")}
    env.update(LOOP_PID_DIR=str(pid_dir), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = ["nice", "-n", str(settings.run_nice)] if settings.run_nice else []
    command += [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    command += [str(script), ending, str(settings.steps)]
    log = work / "output.txt"
    with log.open("w") as output:
        proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=settings.watchdog)
        except subprocess.TimeoutExpired:
            stacks = settings.stacks_dir / f"hang-{script.stem}-{ending}-{index}-{os.getpid()}.txt"
            _dump_stacks(pid_dir, stacks)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            with stacks.open("a") as f:
                f.write("==== run output (faulthandler dumps at the end) ====\n" + log.read_text())
            return "hang", f"stacks in {stacks}"
    text = log.read_text()
    tail = " | ".join(text.strip().splitlines()[-4:])
    if code != 0 or "terminate called" in text:
        return "abort", f"torchrun exit code {code}: {tail}"
    if "Traceback" in text or "Exception ignored" in text or "rank 0 done" not in text:
        return "error", f"exit code 0 but an error or no result: {tail}"
    return "ok", ""


def _loop(flavour: str, ending: str, script: Path, runs: int, settings: Settings, work: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    start = time.monotonic()
    for index in range(1, runs + 1):
        outcome, note = _one_run(script, ending, work, settings, index)
        counts[outcome] += 1
        if outcome != "ok":
            print(f"  {flavour} {ending} run {index}: {outcome}: {note}", flush=True)
        elif index % 10 == 0:
            print(f"  {flavour} {ending}: {index} runs ({time.monotonic() - start:.0f}s)", flush=True)
    print(
        f"{flavour} {ending}: {runs} runs, {counts['ok']} ok, {counts['hang']} hang, {counts['abort']} abort,"
        f" {counts['error']} error ({time.monotonic() - start:.0f}s)",
        flush=True,
    )
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="runs per variant")
    parser.add_argument("--steps", type=int, default=300, help="training steps per run")
    parser.add_argument("--busy", type=int, default=3, help="extra processes spinning on the CPUs")
    parser.add_argument("--run-nice", type=int, default=0, help="extra niceness of the runs (below the busy ones)")
    parser.add_argument("--watchdog", type=float, default=60.0, help="seconds before a run counts as hung")
    parser.add_argument("--endings", nargs="*", choices=ENDINGS, default=list(ENDINGS), help="with Fabric")
    parser.add_argument("--raw-endings", nargs="*", choices=ENDINGS, default=["destroy"], help="plain PyTorch")
    parser.add_argument("--stacks-dir", type=Path, default=Path(tempfile.gettempdir()) / "exit_endings_stacks")
    args = parser.parse_args()
    args.stacks_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(steps=args.steps, watchdog=args.watchdog, run_nice=args.run_nice, stacks_dir=args.stacks_dir)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    failures = 0
    try:
        with tempfile.TemporaryDirectory(dir=args.stacks_dir) as tmp:
            scripts = {"fabric": Path(tmp, "fabric_ending.py"), "raw": Path(tmp, "raw_ending.py")}
            scripts["fabric"].write_text(PRELUDE + FABRIC_TRAIN + ENDING)
            scripts["raw"].write_text(PRELUDE + RAW_TRAIN + ENDING)
            variants = [("fabric", e) for e in args.endings] + [("raw", e) for e in args.raw_endings]
            for flavour, ending in variants:
                counts = _loop(flavour, ending, scripts[flavour], args.runs, settings, Path(tmp, "run"))
                if flavour == "fabric":
                    failures += counts["hang"] + counts["abort"] + counts["error"]
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
