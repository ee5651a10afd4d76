"""Parity and overhead benchmarks of fabric against raw PyTorch (run by ``nox -s bench``).

    python benchmarks/run.py                 # every CPU suite (~10 minutes on a shared 2-core machine)
    python benchmarks/run.py --quick         # fewer repetitions and steps (~3 minutes): a smoke run
    python benchmarks/run.py --only train import
    python benchmarks/run.py --cuda          # adds the bf16-mixed GPT workload on one CUDA GPU
    python benchmarks/run.py --update-readme # also writes the table into benchmarks/README.md
    python benchmarks/run.py --no-peers      # leave out Lightning Fabric and HF Accelerate even if installed

Every training trial is a fresh process; raw PyTorch (A) and fabric (B) alternate (A B A B ...), and ratios are
medians over the back-to-back pairs. Where Lightning Fabric or HF Accelerate is importable (``pip install -r
benchmarks/requirements-peers.txt``, as ``nox -s bench`` does) they join the fabric rows of the training suite as
more sides of the same rotation (A B C D, then D C B A). Results go to ``benchmarks/results/latest.json`` and the
tables to stdout.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import (
    HERE,
    ChildFailedError,
    child_environment,
    run_checkpoint_child,
    run_command,
    run_pair,
    warm_bytecode_cache,
)
from report import (
    checkpoint_rows,
    import_row,
    launch_row,
    peer_header,
    peer_rows,
    render,
    training_rows,
    update_readme,
)
from startup import import_suite, launch_suite
from workloads import PEERS, WORKLOADS, max_abs_diff

SUITES = ("train", "import", "launch", "checkpoint", "sharded", "profile", "cuda")
CPU_SUITES = SUITES[:-1]
IMPLS = ("raw", "fabric")

# (workload, precision, processes, side B): the CPU training suite. Side B "raw" is the control: raw against raw,
# which shows how far two identical processes drift apart on this machine (the noise floor of every ratio).
TRAIN_CONFIGS = [
    ("mlp", "32-true", 1, "fabric"),
    ("mlp", "bf16-mixed", 1, "fabric"),
    ("mlp", "32-true", 2, "fabric"),
    ("mlp", "bf16-mixed", 2, "fabric"),
    ("convnet", "32-true", 1, "fabric"),
    ("convnet", "bf16-mixed", 1, "fabric"),
    ("convnet", "32-true", 2, "fabric"),
    ("mlp", "32-true", 1, "raw"),
    ("convnet", "32-true", 1, "raw"),
    ("mlp", "32-true", 2, "raw"),
]
# repetitions per side: (full, quick)
REPS = {
    "train": (6, 1),
    "import": (10, 5),
    "launch": (3, 1),
    "checkpoint": (9, 3),
    "sharded": (3, 2),
    "profile": (1, 1),
    "cuda": (3, 2),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and steps (smoke run)")
    parser.add_argument("--cuda", action="store_true", help="also run the bf16-mixed GPT workload on CUDA")
    parser.add_argument("--only", nargs="+", choices=SUITES, help="run only these suites")
    parser.add_argument("--reps", type=int, help="repetitions per side for every suite (overrides the defaults)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "latest.json")
    parser.add_argument("--update-readme", action="store_true", help="write the table into benchmarks/README.md")
    parser.add_argument(
        "--no-peers", action="store_true", help="leave out Lightning Fabric and HF Accelerate even where installed"
    )
    parser.add_argument(
        "--from-json", type=Path, metavar="PATH", help="render the tables of a saved run (its --json file); run nothing"
    )
    args = parser.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        parser.error(f"--reps must be >= 1, got {args.reps}")
    return args


def reps_for(suite: str, args: argparse.Namespace) -> int:
    return args.reps if args.reps is not None else REPS[suite][1 if args.quick else 0]


def trial_spec(workload: str, impl: str, precision: str, world_size: int, quick: bool, device: str) -> dict[str, Any]:
    w = WORKLOADS[workload]
    return {
        "workload": workload,
        "impl": impl,
        "precision": precision,
        "world_size": world_size,
        "chunks": w.quick_chunks if quick else w.chunks,
        "device": device,
    }


def installed_peers() -> tuple[dict[str, str], list[str]]:
    """The peers importable here (impl -> version) and a note for each one that is not."""
    found, notes = {}, []
    for impl, (distribution, name) in PEERS.items():
        if importlib.util.find_spec(impl) is None:
            notes.append(
                f"{name} is not installed: its column is left out (pip install -r benchmarks/requirements-peers.txt)"
            )
        else:
            found[impl] = importlib.metadata.version(distribution)
    return found, notes


def train_suite(
    configs: list[tuple[str, str, int, str]], reps: int, quick: bool, device: str, peers: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """Every configuration ``reps`` times: a fresh raw and a fresh fabric process each time (and one per peer in the
    fabric rows), taking turns chunk by chunk (the order reverses between repetitions); repetitions are interleaved
    across configurations. Every side's final weights are compared with raw's (max abs diff where not identical)."""
    results = []
    for rep in range(reps):
        for workload, precision, world_size, side_b in configs:
            sides = [*IMPLS, *(peers if side_b == "fabric" else [])]
            with tempfile.TemporaryDirectory(prefix="fabric-bench-weights-") as weights:
                specs = {
                    impl: {
                        **trial_spec(
                            workload, side_b if impl == "fabric" else impl, precision, world_size, quick, device
                        ),
                        "weights_path": os.path.join(weights, f"{impl}.pt"),
                    }
                    for impl in sides
                }
                pair = run_pair(specs, sides if rep % 2 == 0 else sides[::-1])
                for impl in sides[1:]:
                    ours, raw = pair[impl][0], pair["raw"][0]
                    same = ours["digest"] == raw["digest"]
                    ours["max_abs_diff_vs_raw"] = (
                        0.0 if same else max_abs_diff(specs["raw"]["weights_path"], specs[impl]["weights_path"])
                    )
            results.append(pair)
            raw_s = pair["raw"][0]["step_median_s"]
            shown = "  ".join(
                f"{side_b if impl == 'fabric' else impl} {pair[impl][0]['step_median_s'] / raw_s:.3f}"
                for impl in sides[1:]
            )
            print(
                f"  [{rep + 1}/{reps}] {workload:8s} {precision:10s} x{world_size}  raw {raw_s:.4g} s  {shown}",
                flush=True,
            )
    return results


def run_profile(quick: bool) -> str:
    """The hot-path tables of ``profile_hot_paths.py`` (run in a fresh process)."""
    command = [sys.executable, str(HERE / "profile_hot_paths.py"), *(["--quick"] if quick else [])]
    _, out = run_command(command, child_environment(), timeout=600)
    return out.strip()


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def rows_for(results: dict[str, Any]) -> list[list[str]]:
    """The table rows of every suite in ``results`` (suite name -> what the suite returned)."""
    rows: list[list[str]] = []
    for suite, result in results.items():
        if isinstance(result, dict) and "error" in result:
            rows.append([f"{suite}: FAILED (see the log)", *[""] * 8])
        elif suite in ("train", "cuda"):
            rows += training_rows(result)
        elif suite == "import":
            rows.append(import_row(result))
        elif suite == "launch":
            rows.append(launch_row(result))
        elif suite in ("checkpoint", "sharded"):
            rows += checkpoint_rows(result)
    return rows


def run_suite(suite: str, reps: int, quick: bool, peers: tuple[str, ...]) -> Any:
    if suite == "train":
        return train_suite(TRAIN_CONFIGS, reps, quick, "cpu", peers)
    if suite == "cuda":
        return train_suite([("gpt", "bf16-mixed", 1, "fabric")], reps, quick, "cuda")
    if suite == "import":
        return import_suite(reps)
    if suite == "launch":
        return launch_suite(reps)
    if suite == "checkpoint":
        return run_checkpoint_child("single", reps, 1)
    if suite == "sharded":
        return run_checkpoint_child("sharded", reps, 2)
    return run_profile(quick)


def publish(saved: dict[str, Any], update: bool) -> None:
    """Print the tables of a run (and write them into the README)."""
    results = saved["results"]
    text = render(
        rows_for(results),
        command=saved.get("command", "(not recorded)"),
        started=saved["started"],
        duration=saved["duration_s"],
        load=saved.get("load", ("?", "?")),
    )
    profile_text = results.get("profile") if isinstance(results.get("profile"), str) else ""
    print()
    print(text)
    peers_text = render_peers(saved)
    if peers_text:
        print()
        print(peers_text)
    if profile_text:
        print()
        print(profile_text)
    if update:
        update_readme(text)
        if profile_text:
            update_readme(profile_text, block="profile")
        if peers_text:
            update_readme(peers_text, block="peers")


def render_peers(saved: dict[str, Any]) -> str:
    """The peers' table of a run (empty if its training suite ran without any), with the notes on missing peers."""
    train = saved["results"].get("train")
    peers = saved.get("peers", {})
    if not isinstance(train, list) or not peers:
        return ""
    text = render(
        peer_rows(train, peers),
        command=saved.get("command", "(not recorded)"),
        started=saved["started"],
        duration=saved["duration_s"],
        load=saved.get("load", ("?", "?")),
        header=peer_header(peers, {impl: name for impl, (_, name) in PEERS.items()}),
    )
    return "\n".join([text, *(f"\n{note}." for note in saved.get("peer_notes", []))])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        publish(json.loads(args.from_json.read_text()), args.update_readme)
        return 0
    suites = list(args.only or CPU_SUITES)
    if args.cuda and "cuda" not in suites:
        suites.append("cuda")
    if "cuda" in suites and not cuda_available():
        print("--cuda: CUDA is not available on this machine; the GPT workload needs a GPU", file=sys.stderr)
        return 2
    peers, peer_notes = ({}, ["Peers left out (--no-peers)"]) if args.no_peers else installed_peers()
    for note in peer_notes:
        print(note, flush=True)
    started, load_before = time.time(), f"{os.getloadavg()[0]:.1f}"
    print("compiling bytecode for the benchmark processes ...", flush=True)
    warm_bytecode_cache(list(peers))
    results: dict[str, Any] = {}
    for suite in suites:
        reps = reps_for(suite, args)
        print(f"suite {suite} ({reps} repetitions per side)", flush=True)
        try:
            results[suite] = run_suite(suite, reps, args.quick, tuple(peers))
        except ChildFailedError as err:
            print(f"suite {suite} failed: {err}", file=sys.stderr)
            results[suite] = {"error": str(err)}
    saved = {
        "started": started,
        "duration_s": time.time() - started,
        "command": "nox -s bench" + (" -- " + shlex.join(sys.argv[1:]) if sys.argv[1:] else ""),
        "load": (load_before, f"{os.getloadavg()[0]:.1f}"),
        "peers": peers,
        "peer_notes": peer_notes,
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(saved, indent=1))
    publish(saved, args.update_readme)
    return 1 if any(isinstance(r, dict) and "error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
