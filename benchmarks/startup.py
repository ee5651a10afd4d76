"""Start-up costs: ``import fabric_core`` against ``import torch``, and starting 2 processes with fabric against torch.

Every measurement is a fresh interpreter; medians are reported. The import of torch and what fabric_core adds to it
are timed one after the other in the same interpreter. The launch variants (``LAUNCHES``) run in turns within each
repetition, the first of the turn rotating between repetitions, so that changes in the machine's load hit all alike;
each sample is the wall time of the whole command and the CPU time of its process tree.

``python benchmarks/startup.py [--reps N] [--only import launch]`` prints the start-up table on its own (``nox -s
bench`` shows the ``fabric run`` vs ``torchrun`` row).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
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


def _target(job: str) -> list[str]:
    return [str(HERE / "launch_target.py"), job]


def _torchrun(port: int, job: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--nnodes=1",
        "--master-addr=127.0.0.1",
        f"--master-port={port}",
        *_target(job),
    ]


def _fabric_run(port: int, job: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fabric_core.cli",
        "run",
        "--accelerator=cpu",
        "--devices=2",
        "--strategy=ddp",
        f"--main-port={port}",
        *_target(job),
    ]


def _script(_port: int, job: str) -> list[str]:
    return [sys.executable, *_target(job)]


#: name -> (command builder, job of launch_target.py); every variant starts 2 processes that join a gloo group, pass
#: a barrier and exit. The first two are the row of ``nox -s bench`` (``report.launch_row``).
LAUNCHES = {
    "torchrun": (_torchrun, "torch"),
    "fabric run": (_fabric_run, "fabric"),
    "fabric run, torch job": (_fabric_run, "torch"),
    "torch.multiprocessing.spawn": (_script, "spawn-torch"),
    "Fabric ddp_spawn launch": (_script, "spawn-fabric"),
    "Fabric ddp launch (script)": (_script, "script-fabric"),
}
#: (baseline, compared, what the comparison shows, allowed extra seconds of the median)
COMPARISONS = [
    ("torchrun", "fabric run", "`fabric run` + Fabric job vs `torchrun` + torch job", 0.2),
    ("torchrun", "fabric run, torch job", "`fabric run` vs `torchrun`, the same torch job", 0.2),
    ("torch.multiprocessing.spawn", "Fabric ddp_spawn launch", "`Fabric(strategy='ddp_spawn').launch(fn)`", 0.3),
    ("torch.multiprocessing.spawn", "Fabric ddp launch (script)", "`Fabric(strategy='ddp').launch()`", 0.3),
]


def timed_command(command: list[str], env: dict[str, str], timeout: float = 300) -> tuple[float, float]:
    """Wall time of ``command`` and the CPU time (user + system) of its whole process tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    elapsed, _ = run_command(command, env, timeout=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def launch_suite(reps: int, names: list[str] | None = None) -> dict[str, Any]:
    """Every launch variant (``LAUNCHES``, or those in ``names``) ``reps`` times, taking turns within a repetition.

    ``samples`` holds the wall times per variant, ``cpu`` the CPU times of the same runs.
    """
    chosen = list(LAUNCHES) if names is None else names
    samples: dict[str, list[float]] = {name: [] for name in chosen}
    cpu: dict[str, list[float]] = {name: [] for name in chosen}
    for rep in range(reps):
        shift = rep % len(chosen)
        for name in chosen[shift:] + chosen[:shift]:
            build, job = LAUNCHES[name]
            port = free_port()
            env = child_environment({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
            elapsed, cpu_s = timed_command(build(port, job), env)
            samples[name].append(elapsed)
            cpu[name].append(cpu_s)
    return {"kind": "launch", "reps": reps, "samples": samples, "cpu": cpu}


def _spread(values: list[float]) -> str:
    """The middle half of ``values`` (25th-75th percentile), or the range of fewer than 4."""
    if len(values) < 4:
        return f"{min(values):.2f}-{max(values):.2f}"
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"{q1:.2f}-{q3:.2f}"


def launch_table(result: dict[str, Any]) -> str:
    """Per variant: median wall time, its spread and the median CPU time; then each comparison against its target
    (difference of the medians, and the median of the per-repetition differences)."""
    samples, cpu = result["samples"], result["cpu"]
    lines = ["| start 2 processes, join gloo, barrier, exit | wall s (median) | wall s (25-75%) | CPU s (median) |"]
    lines.append("|---|---|---|---|")
    for name, values in samples.items():
        lines.append(
            f"| {name} | {statistics.median(values):.2f} | {_spread(values)} | {statistics.median(cpu[name]):.2f} |"
        )
    lines += ["", "| comparison | extra wall s (medians) | extra wall s (paired median) | extra CPU s | target |"]
    lines.append("|---|---|---|---|---|")
    for base, other, label, allowed in COMPARISONS:
        if base not in samples or other not in samples:
            continue
        extra = statistics.median(samples[other]) - statistics.median(samples[base])
        paired = statistics.median([b - a for a, b in zip(samples[base], samples[other])])
        extra_cpu = statistics.median(cpu[other]) - statistics.median(cpu[base])
        verdict = "met" if extra <= allowed else "**missed**"
        lines.append(
            f"| {label} vs {base} | {extra:+.2f} | {paired:+.2f} | {extra_cpu:+.2f} | <= +{allowed:.1f} s: {verdict} |"
        )
    return "\n".join(lines)


def import_table(result: dict[str, Any]) -> str:
    samples = result["samples"]
    ratios = [(s["torch"]["wall"] + s["fabric_extra"]["wall"]) / s["torch"]["wall"] for s in samples]
    cpu = [(s["torch"]["cpu"] + s["fabric_extra"]["cpu"]) / s["torch"]["cpu"] for s in samples]
    torch_s = statistics.median([s["torch"]["wall"] for s in samples])
    extra = statistics.median([s["fabric_extra"]["wall"] for s in samples])
    ratio = statistics.median(ratios)
    return "\n".join(
        [
            "| `import fabric_core` vs `import torch` | torch s | fabric's extra s | ratio (median) | ratio (25-75%)"
            " | CPU-time ratio | target |",
            "|---|---|---|---|---|---|---|",
            f"| {len(samples)} fresh interpreters | {torch_s:.3f} | {extra:.3f} | {ratio:.3f} | {_spread(ratios)} |"
            f" {statistics.median(cpu):.3f} | <= 1.03: {'met' if ratio <= 1.03 else '**missed**'} |",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=10, help="repetitions of every variant (default 10)")
    parser.add_argument("--only", nargs="+", choices=("import", "launch"), default=["import", "launch"])
    parser.add_argument("--launches", nargs="+", choices=list(LAUNCHES), help="only these launch variants")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error(f"--reps must be >= 1, got {args.reps}")
    load = os.getloadavg()[0]
    if "import" in args.only:
        print(import_table(import_suite(args.reps)), flush=True)
        print(flush=True)
    if "launch" in args.only:
        print(launch_table(launch_suite(args.reps, args.launches)), flush=True)
    print(f"\nLoad average (1 min) before / after: {load:.1f} / {os.getloadavg()[0]:.1f}; {os.cpu_count()} CPUs.")


if __name__ == "__main__":
    main()
