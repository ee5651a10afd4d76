"""The GPT-style bf16-mixed benchmark of ``gpu_check.sh``: tokens/s and peak memory of fabric against raw PyTorch.

Runs the ``gpt`` workload of ``workloads.py`` (GPT-2-medium-sized, batch 16, AdamW, bf16-mixed, one GPU) through the
harness of ``nox -s bench`` (fresh raw and fabric processes taking turns chunk by chunk, the order reversed between
repetitions), then prints its rows and writes them as JSON (``--json``) for the summary of ``gpu_check.sh``.

``--fake`` checks the pipeline on a machine without a GPU: the toy ``gpt-tiny`` workload on the CPU, and peak memory
from the processes' peak RSS instead of ``torch.cuda.max_memory_allocated``. Its numbers say nothing about a GPU.

Targets (issue #18): tokens/s >= 0.99x raw, peak memory <= raw + 1%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from run import train_suite

TOKENS_TARGET = 0.99  # fabric's tokens/s over raw's, at least
MEMORY_TARGET = 1.01  # fabric's peak memory over raw's, at most


def summarize(pairs: list[dict[str, Any]], *, fake: bool) -> list[dict[str, Any]]:
    """The benchmark's rows: tokens/s (median of per-chunk ratios), peak memory, weights identical; ``met`` is
    ``None`` where ``fake`` makes a target meaningless."""
    raw = [pair["raw"][0] for pair in pairs]
    fab = [pair["fabric"][0] for pair in pairs]
    # tokens/s is inversely proportional to the step time: the ratio of raw's step time to fabric's, chunk by chunk
    speed = statistics.median(
        [a / b for r, f in zip(raw, fab) for a, b in zip(r["chunk_step_s"], f["chunk_step_s"]) if b > 0]
    )
    memory_key = "peak_rss_mib" if fake else "peak_cuda_mib"
    raw_mem = statistics.median([r[memory_key] for r in raw])
    fab_mem = statistics.median([f[memory_key] for f in fab])
    same = all(pair["raw"][0]["digest"] == pair["fabric"][0]["digest"] for pair in pairs)
    memory_label = "peak RSS MiB (CPU, --fake)" if fake else "peak CUDA memory MiB (max_memory_allocated)"
    rows = [
        {
            "check": "GPT bf16-mixed tokens/s" + (" (gpt-tiny on CPU, --fake)" if fake else ""),
            "raw": f"{statistics.median([r['tokens_per_s'] for r in raw]):,.0f}",
            "fabric": f"{statistics.median([f['tokens_per_s'] for f in fab]):,.0f}",
            "ratio": f"{speed:.3f}",
            "target": f">= {TOKENS_TARGET}",
            "met": speed >= TOKENS_TARGET,
        },
        {
            "check": f"GPT bf16-mixed {memory_label}",
            "raw": f"{raw_mem:,.0f}",
            "fabric": f"{fab_mem:,.0f}",
            "ratio": f"{fab_mem / raw_mem:.4f}",
            "target": f"<= {MEMORY_TARGET}",
            "met": fab_mem <= raw_mem * MEMORY_TARGET,
        },
        {
            "check": "GPT bf16-mixed final weights identical to raw",
            "raw": "",
            "fabric": "",
            "ratio": "",
            "target": "identical",
            "met": same,
        },
    ]
    if fake:  # the CPU and gpt-tiny check the pipeline, not the targets (which are about a GPU)
        for row in rows[:2]:
            row["met"] = None
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=2, help="repetitions (fresh raw + fabric processes each)")
    parser.add_argument("--quick", action="store_true", help="fewer chunks of steps")
    parser.add_argument("--fake", action="store_true", help="no GPU: gpt-tiny on the CPU (checks the pipeline)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error(f"--reps must be >= 1, got {args.reps}")
    if not args.fake:
        import torch

        if not torch.cuda.is_available():
            print("gpt_cuda.py: CUDA is not available; --fake checks the pipeline on the CPU", file=sys.stderr)
            return 2
    workload, device = ("gpt-tiny", "cpu") if args.fake else ("gpt", "cuda")
    pairs = train_suite([(workload, "bf16-mixed", 1, "fabric")], args.reps, args.quick, device)
    rows = summarize(pairs, fake=args.fake)
    for row in rows:
        verdict = "not judged (--fake)" if row["met"] is None else "met" if row["met"] else "MISSED"
        numbers = f"raw {row['raw']} fabric {row['fabric']} ratio {row['ratio']}"
        print(f"{row['check']}: {numbers} ({row['target']}: {verdict})")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all(row["met"] is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
