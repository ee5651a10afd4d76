"""Turning samples into the results table (markdown) and writing it into ``benchmarks/README.md``."""

from __future__ import annotations

import datetime
import math
import os
import platform
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent / "README.md"

# target ratios from the issue: (bound, "max" = fabric/raw time at most, "min" = fabric/raw throughput at least)
TARGETS: dict[str, tuple[float, str]] = {
    "mlp": (1.03, "max"),
    "convnet": (1.01, "max"),
    "import": (1.05, "max"),
    "checkpoint": (0.95, "min"),
}


def median(values: Sequence[float]) -> float:
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return math.nan
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def paired_ratio(baseline: Sequence[float], candidate: Sequence[float]) -> float:
    """Median over the A/B pairs of candidate / baseline (each pair ran back to back, under the same load)."""
    return median([b / a for a, b in zip(baseline, candidate) if a > 0])


def _time(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    if seconds < 0:
        return "-" + _time(-seconds)
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _verdict(value: float, target: tuple[float, str] | None, cpu_value: float = math.nan) -> str:
    """Whether the ratio meets its target; with a CPU-time ratio too, both must (the stricter reading)."""
    if target is None or math.isnan(value):
        return ""
    bound, kind = target
    values = [value] if math.isnan(cpu_value) else [value, cpu_value]
    met = all(v <= bound if kind == "max" else v >= bound for v in values)
    sign = "≤" if kind == "max" else "≥"
    return f"{sign} {bound:.2f}: {'met' if met else '**missed**'}"


def chunk_ratio(raw: list[dict[str, Any]], other: list[dict[str, Any]], key: str) -> float:
    """Median over every chunk pair of every repetition of ``other``'s median step time over raw's in that chunk."""
    return median([b / a for r, o in zip(raw, other) for a, b in zip(r[key], o[key]) if a > 0])


# -- rows --------------------------------------------------------------------------------------------------------
def training_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    """One row per (workload, precision, processes). A result is one pair run: ``{"raw": ranks, "fabric": ranks}``.

    The ratio is the median, over every chunk pair of every repetition, of fabric's median step time in the chunk
    divided by raw's in the chunk that ran right before or after it.
    """
    groups: dict[tuple[str, str, int, bool], list[dict[str, Any]]] = {}
    for pair in results:
        trial = pair["raw"][0]["trial"]
        control = pair["fabric"][0]["trial"]["impl"] == "raw"
        groups.setdefault((trial["workload"], trial["precision"], trial["world_size"], control), []).append(pair)
    rows = []
    for (workload, precision, world_size, control), pairs in groups.items():
        raw = [p["raw"][0] for p in pairs]
        fab = [p["fabric"][0] for p in pairs]
        digests = {rank["digest"] for p in pairs for impl in ("raw", "fabric") for rank in p[impl]}
        ratio, cpu_ratio = chunk_ratio(raw, fab, "chunk_step_s"), chunk_ratio(raw, fab, "chunk_cpu_s")
        if "tokens_per_s" in raw[0]:
            shown = tuple(f"{median([r['tokens_per_s'] for r in side]):,.0f} tok/s" for side in (raw, fab))
        else:
            shown = tuple(_time(median([r["step_median_s"] for r in side])) for side in (raw, fab))
        memory = "peak_cuda_mib" if "peak_cuda_mib" in raw[0] else "peak_rss_mib"
        name = f"{workload}, {precision}, " + ("1 proc" if world_size == 1 else f"{world_size} procs (DDP, gloo)")
        if control:
            name = f"noise floor: raw vs raw ({name}); the fabric column is a second raw process"
        rows.append(
            [
                name,
                *shown,
                f"{ratio:.3f}",
                "n/a" if math.isnan(cpu_ratio) else f"{cpu_ratio:.3f}",
                f"{median([r[memory] for r in raw]):.0f} / {median([r[memory] for r in fab]):.0f}"
                + (" (CUDA)" if memory == "peak_cuda_mib" else ""),
                "yes" if len(digests) == 1 else f"**no** ({len(digests)} digests)",
                f"{len(pairs)}x{len(raw[0]['chunk_step_s'])}",
                "" if control else _verdict(ratio, TARGETS.get(workload), cpu_ratio),
            ]
        )
    return rows


def import_row(result: dict[str, Any]) -> list[str]:
    samples = result["samples"]
    torch_s = [s["torch"] for s in samples]
    total = [{k: s["torch"][k] + s["fabric_extra"][k] for k in ("wall", "cpu", "gc")} for s in samples]
    ratio = median([t["wall"] / s["wall"] for s, t in zip(torch_s, total)])
    cpu = median([t["cpu"] / s["cpu"] for s, t in zip(torch_s, total)])
    extra_gc = median([s["fabric_extra"]["gc"] for s in samples])
    return [
        "`import fabric_core` vs `import torch` (fresh interpreters; fabric_core = torch + what it adds)",
        _time(median([s["wall"] for s in torch_s])),
        _time(median([t["wall"] for t in total])),
        f"{ratio:.3f}",
        f"{cpu:.3f}",
        f"GC in fabric's part: {_time(extra_gc)}",
        "",
        f"{len(samples)}",
        _verdict(ratio, TARGETS["import"], cpu),
    ]


def launch_row(result: dict[str, Any]) -> list[str]:
    torch_s, fabric_s = result["samples"]["torchrun"], result["samples"]["fabric run"]
    return [
        "`fabric run` vs `torchrun`: start 2 processes, join gloo, barrier, exit",
        _time(median(torch_s)),
        _time(median(fabric_s)),
        f"{paired_ratio(torch_s, fabric_s):.3f}",
        "n/a",
        "",
        "",
        f"{len(torch_s)}+{len(fabric_s)}",
        "",
    ]


def checkpoint_rows(result: dict[str, Any]) -> list[list[str]]:
    """Throughput rows: fabric's MB/s as a fraction of torch's (higher is better)."""
    samples, sizes = result["samples"], result["bytes"]
    sharded = result["kind"] == "sharded"
    base = "dcp" if sharded else "torch"
    label = "sharded FSDP checkpoint (2 procs, DCP)" if sharded else "single-file checkpoint"
    pairs = [("save", f"{base} save", "fabric save"), ("load", f"{base} load", "fabric load")]
    if not sharded:
        pairs.append(("save, durable: fsync=True vs torch.save+fsync", "torch save+fsync", "fabric save fsync"))
    rows = []
    for what, a, b in pairs:
        if a not in samples or b not in samples:  # a run saved by an older version of the benchmark
            continue
        ratio = paired_ratio(samples[b], samples[a])  # throughput ratio = torch time / fabric time
        rows.append(
            [
                f"{label} {what} ({sizes['fabric'] / 1e6:.0f} MB)",
                f"{sizes['torch'] / 1e6 / median(samples[a]):.0f} MB/s",
                f"{sizes['fabric'] / 1e6 / median(samples[b]):.0f} MB/s",
                f"{ratio:.3f}",
                "n/a",
                "",
                "",
                f"{len(samples[a])}+{len(samples[b])}",
                _verdict(ratio, TARGETS["checkpoint"]) if "fsync" not in what else "(reference)",
            ]
        )
    return rows


def _parity(pairs: list[dict[str, Any]], impl: str) -> str:
    """Weights of ``impl`` against raw's: identical (every rank's digest equals raw's) or the largest difference."""
    raw_digests = {rank["digest"] for p in pairs for rank in p["raw"]}
    digests = {rank["digest"] for p in pairs for rank in p[impl]}
    if digests == raw_digests and len(digests) == 1:
        return "identical"
    diffs = [p[impl][0].get("max_abs_diff_vs_raw", math.nan) for p in pairs]
    ranks = "" if all(len({r["digest"] for r in p[impl]}) == 1 for p in pairs) else "; ranks differ"
    return f"max abs diff {max(diffs):.1e}{ranks}"


def peer_rows(results: list[dict[str, Any]], peers: dict[str, str]) -> list[list[str]]:
    """One row per configuration that ran with the peers in ``peers`` (impl -> version): each side's median step
    time with its ratio to raw (as in ``training_rows``), CPU-time ratios, weights against raw, peak RSS, and
    whether fabric's ratio is below every peer's (wall and CPU time both)."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for pair in results:
        if all(impl in pair for impl in peers):
            trial = pair["raw"][0]["trial"]
            groups.setdefault((trial["workload"], trial["precision"], trial["world_size"]), []).append(pair)
    sides = ["fabric", *peers]
    rows = []
    for (workload, precision, world_size), pairs in groups.items():
        raw = [p["raw"][0] for p in pairs]
        by_side = {impl: [p[impl][0] for p in pairs] for impl in sides}
        wall = {impl: chunk_ratio(raw, by_side[impl], "chunk_step_s") for impl in sides}
        cpu = {impl: chunk_ratio(raw, by_side[impl], "chunk_cpu_s") for impl in sides}
        ahead = all(wall["fabric"] < wall[p] and cpu["fabric"] < cpu[p] for p in peers)
        rows.append(
            [
                f"{workload}, {precision}, " + ("1 proc" if world_size == 1 else f"{world_size} procs (DDP, gloo)"),
                _time(median([r["step_median_s"] for r in raw])),
                *(f"{_time(median([r['step_median_s'] for r in by_side[i]]))} ({wall[i]:.3f})" for i in sides),
                " / ".join(f"{cpu[i]:.3f}" for i in sides),
                " / ".join(_parity(pairs, i) for i in sides),
                " / ".join(f"{median([r['peak_rss_mib'] for r in side]):.0f}" for side in (raw, *by_side.values())),
                f"{len(pairs)}x{len(raw[0]['chunk_step_s'])}",
                "yes" if ahead else "**no**",
            ]
        )
    return rows


def peer_header(peers: dict[str, str], names: dict[str, str]) -> list[str]:
    """The peers' table header: ``names`` maps impl -> display name (``workloads.PEERS``)."""
    labels = [f"{names[i]} {v}" for i, v in peers.items()]
    short = " / ".join(["fabric", *(impl.capitalize() for impl in peers)])
    return [
        "benchmark",
        "raw torch (median)",
        "fabric (ratio)",
        *(f"{label} (ratio)" for label in labels),
        f"CPU-time ratio {short}",
        f"weights vs raw: {short}",
        f"peak RSS MiB raw / {short}",
        "runs",
        "fabric ahead of every peer",
    ]


HEADER = [
    "benchmark",
    "raw torch (median)",
    "fabric (median)",
    "ratio",
    "CPU-time ratio",
    "peak RSS MiB raw / fabric",
    "weights identical",
    "runs",
    "target",
]


def table(rows: list[list[str]], header: list[str] = HEADER) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as file:
            found = re.search(r"model name\s*:\s*(.+)", file.read())
            model = found.group(1).strip() if found else model
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as file:
            kib = int(re.search(r"MemTotal:\s*(\d+)", file.read()).group(1))  # type: ignore[union-attr]
        memory = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, AttributeError):
        memory = ""
    import torch

    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({model}){memory};"
        f" Python {platform.python_version()}, torch {torch.__version__}"
    )


def render(
    rows: list[list[str]],
    *,
    command: str,
    started: float,
    duration: float,
    load: tuple[str, str] | list[str],
    header: list[str] = HEADER,
) -> str:
    when = datetime.datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M")
    return "\n".join(
        [
            f"Measured {when} on {machine()}.",
            f"Command: `{command}` ({duration / 60:.1f} min)."
            f" Load average (1 min) before / after: {load[0]} / {load[1]}.",
            "",
            table(rows, header),
        ]
    )


def update_readme(text: str, block: str = "results") -> None:
    """Replace the README's ``<!-- BLOCK:start -->`` ... ``<!-- BLOCK:end -->`` section with ``text``."""
    start, end = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
    content = README.read_text()
    if start not in content or end not in content:
        raise SystemExit(f"{README} has no {start} ... {end} block to replace")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    README.write_text(f"{head}{start}\n{text}\n{end}{tail}")
