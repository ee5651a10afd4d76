"""Start-up costs: ``import fabric_core`` against ``import torch``, and ``fabric run`` against ``torchrun``.

Every measurement is a fresh interpreter; medians are reported. The launchers alternate (A B A B ...) so that
changes in the machine's load hit both alike; the import of torch and what fabric_core adds to it are timed one
after the other in the same interpreter.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from harness import HERE, child_environment, free_port, run_command

# Runs in a fresh interpreter: time `import torch`, then what `import fabric_core` adds on top (wall, CPU and the
# garbage collector's share of each). ``import fabric_core`` alone costs the sum: its first import is torch's.
_IMPORT_PROBE = """
import gc, json, time
gc_time = [0.0]
started = [0.0]
def on_gc(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        gc_time[0] += time.perf_counter() - started[0]
gc.callbacks.append(on_gc)
def timed(statement):
    gc_time[0] = 0.0
    wall, cpu = time.perf_counter(), time.process_time()
    exec(statement)
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "gc": gc_time[0]}
torch_part = timed("import torch")
fabric_part = timed("import fabric_core")
print(json.dumps({"torch": torch_part, "fabric_extra": fabric_part}))
"""


def import_probe() -> dict[str, dict[str, float]]:
    _, out = run_command([sys.executable, "-c", _IMPORT_PROBE], child_environment())
    return json.loads(out.strip().splitlines()[-1])


def import_suite(reps: int) -> dict[str, Any]:
    """``reps`` fresh interpreters, each timing ``import torch`` and then the rest of ``import fabric_core``.

    Timing both in one interpreter pairs them under the same load: the per-interpreter ratio
    (torch + fabric's extra) / torch is far steadier than two separate interpreters' times.
    """
    return {"kind": "import", "reps": reps, "samples": [import_probe() for _ in range(reps)]}


def launch_commands(port: int) -> dict[str, list[str]]:
    """The two ways of starting the same 2-process job (gloo process group, one barrier, clean exit)."""
    target = str(HERE / "launch_target.py")
    return {
        "torchrun": [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node=2",
            "--nnodes=1",
            "--master-addr=127.0.0.1",
            f"--master-port={port}",
            target,
            "torch",
        ],
        "fabric run": [
            sys.executable,
            "-m",
            "fabric_core.cli",
            "run",
            "--accelerator=cpu",
            "--devices=2",
            "--strategy=ddp",
            f"--main-port={port}",
            target,
            "fabric",
        ],
    }


def launch_suite(reps: int) -> dict[str, Any]:
    """Wall time of ``torchrun`` (A) and ``fabric run`` (B) starting 2 processes that join a process group."""
    samples: dict[str, list[float]] = {"torchrun": [], "fabric run": []}
    for _ in range(reps):
        for name, command in launch_commands(free_port()).items():
            elapsed, _ = run_command(command, child_environment(), timeout=300)
            samples[name].append(elapsed)
    return {"kind": "launch", "reps": reps, "samples": samples}
