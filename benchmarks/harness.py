"""Starting benchmark processes: a clean environment, one process or torchrun-style ranks, JSON results back."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: compiled bytecode for every benchmark process, outside the source tree (the checkout may forbid writing it)
PYCACHE = Path(tempfile.gettempdir()) / "fabric-bench-pycache"

# variables that would change what a child does (a launcher's leftovers, fabric's flags)
_DROPPED_PREFIXES = ("FABRIC_", "TORCHELASTIC_", "SLURM_", "OMPI_", "PMI_", "LSB_", "KUBEFLOW_", "XRT_", "TPU_")
_DROPPED = {
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "PYTHONDONTWRITEBYTECODE",
}


class ChildFailedError(RuntimeError):
    """A benchmark process exited with an error; the message holds the end of its output."""


def child_environment(extra: dict[str, str] | None = None, threads: int = 1) -> dict[str, str]:
    """The environment of every benchmark process.

    One intra-op thread (the machine is shared, and raw and fabric must run alike). Bytecode is cached under
    ``PYCACHE`` so that imports are measured as they are for an installed package, not with every module of an
    editable checkout compiled from source again (``PYTHONDONTWRITEBYTECODE`` would otherwise force that).

    glibc's malloc gets fixed thresholds: by default it moves its mmap threshold with the allocation history of the
    process, so two processes running the same arithmetic (same weights, bit for bit) can differ by 10-20% per step
    when one of them keeps mapping and unmapping (and zero-filling) its larger temporary buffers and the other does
    not. Fixed thresholds make both sides allocate alike.
    """
    env = {
        key: value for key, value in os.environ.items() if key not in _DROPPED and not key.startswith(_DROPPED_PREFIXES)
    }
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env["PYTHONHASHSEED"] = "0"
    env["MALLOC_MMAP_THRESHOLD_"] = str(32 * 2**20)
    env["MALLOC_TRIM_THRESHOLD_"] = str(2**30)
    env.update(extra or {})
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rank_environment(rank: int, world_size: int, port: int) -> dict[str, str]:
    """What torchrun sets for one local rank of a single-node run."""
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "GROUP_RANK": "0",
        "NODE_RANK": "0",
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "TORCHELASTIC_RUN_ID": "fabric-bench",
    }


def _fail(command: list[str], output: str, code: int | None) -> ChildFailedError:
    tail = "\n".join(output.strip().splitlines()[-25:])
    return ChildFailedError(f"{' '.join(command[:4])} ... exited with {code}:\n{tail}")


def run_command(command: list[str], env: dict[str, str], timeout: float = 600) -> tuple[float, str]:
    """Run a command to completion; return its wall time and output. Raise ``ChildFailedError`` if it fails."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise _fail(command, done.stdout + done.stderr, done.returncode)
    return elapsed, done.stdout


def run_ranks(script: str, args: list[str], world_size: int, timeout: float = 600) -> None:
    """Start ``world_size`` processes of ``python script *args`` with torchrun's variables; wait for all of them."""
    port = free_port()
    command = [sys.executable, str(HERE / script), *args]
    processes = []
    logs = []
    for rank in range(world_size):
        log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the process; closed below
        env = child_environment(rank_environment(rank, world_size, port))
        processes.append(subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        logs.append(log)
    deadline = time.monotonic() + timeout
    failed: tuple[int, int | None] | None = None
    try:
        for rank, process in enumerate(processes):
            try:
                code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                code = None
            if code != 0 and failed is None:
                failed = (rank, code)
                break
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    if failed is not None:
        log = logs[failed[0]]
        log.seek(0)
        raise _fail(command, log.read(), failed[1])
    for log in logs:
        log.close()


class _Side:
    """The processes (one per rank) of one side of a pair, driven over their stdin/stdout protocol."""

    def __init__(self, spec: dict[str, Any]) -> None:
        world_size = int(spec["world_size"])
        port = free_port()
        command = [sys.executable, str(HERE / "trial.py"), json.dumps(spec)]
        self.name = spec["impl"]
        # one log per rank, alive as long as its process (closed by ``close``)
        self.logs = [tempfile.TemporaryFile(mode="w+") for _ in range(world_size)]  # noqa: SIM115
        self.processes = []
        for rank in range(world_size):
            extra = rank_environment(rank, world_size, port) if world_size > 1 else {}
            self.processes.append(
                subprocess.Popen(
                    command,
                    env=child_environment(extra, threads=int(spec.get("threads", 1))),
                    cwd=ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=self.logs[rank],
                    text=True,
                )
            )

    def go(self) -> None:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()

    def expect(self, word: str) -> list[str]:
        """One protocol line from every rank, each starting with ``word``."""
        lines = []
        for rank, process in enumerate(self.processes):
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line.startswith(word):
                if not line:  # the process ended: let it finish writing its error
                    try:
                        process.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        pass
                log = self.logs[rank]
                log.seek(0)
                raise _fail([self.name, f"rank {rank}", "expected", word], log.read() + line, process.poll())
            lines.append(line)
        return lines

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()
        for log in self.logs:
            log.close()


def run_pair(specs: dict[str, dict[str, Any]], order: list[str], timeout: float = 900) -> dict[str, list[dict]]:
    """Run the sides in ``specs`` (impl -> trial spec) together, chunk by chunk in ``order``; results per rank.

    All sides are started at once and set up in parallel; then each chunk of steps runs on one side while the
    others wait (blocked on stdin, using no CPU), so that the load of the machine hits every side alike.
    """
    sides = {impl: _Side(spec) for impl, spec in specs.items()}
    chunks = int(next(iter(specs.values()))["chunks"])
    watchdog = threading.Timer(timeout, lambda: [p.kill() for s in sides.values() for p in s.processes])
    watchdog.start()
    try:
        for side in sides.values():
            side.expect("ready")
        results: dict[str, list[dict]] = {}
        for chunk in range(chunks + 1):  # the warmup chunk, then the measured ones
            last = chunk == chunks
            for impl in order:
                sides[impl].go()
                lines = sides[impl].expect("result" if last else "done")
                if last:
                    results[impl] = [json.loads(line.split(" ", 1)[1]) for line in lines]
        for side in sides.values():
            for process in side.processes:
                process.wait(timeout=60)
        return results
    finally:
        watchdog.cancel()
        for side in sides.values():
            side.close()


def warm_bytecode_cache(extra: list[str] | None = None) -> None:
    """Compile (once) every module the benchmarks import (and the ``extra`` ones), so that no measured process pays
    for compilation."""
    code = ", ".join(
        ["import torch, torch.distributed.run, fabric_core, fabric_core.cli.main, workloads", *(extra or [])]
    )
    env = child_environment({"PYTHONPATH": str(HERE)})
    run_command([sys.executable, "-c", code], env)


def run_checkpoint_child(mode: str, reps: int, world_size: int, timeout: float = 600) -> dict[str, Any]:
    """Run ``checkpoint_bench.py MODE`` (one process, or torchrun-style ranks) and return rank 0's samples."""
    with tempfile.TemporaryDirectory(prefix="fabric-bench-ckpt-") as out_dir:
        args = [mode, str(reps), out_dir]
        if world_size == 1:
            run_command([sys.executable, str(HERE / "checkpoint_bench.py"), *args], child_environment(), timeout)
        else:
            run_ranks("checkpoint_bench.py", args, world_size, timeout)
        return json.loads((Path(out_dir) / f"{mode}.json").read_text())
