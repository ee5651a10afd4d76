"""Several ``fabric run`` commands on this host, one per node of a multi-node job, started and watched together.

Each command runs in a session of its own (as on separate machines); torchrun starts its worker processes in sessions
of their own too, so the scripts record their pids (``record_pid`` in ``scripts/multi_node.py``) in ``pids/`` and a
job has ended only when no process of the commands' sessions nor any recorded rank is alive.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fabric_testing import find_free_port


def load_script(path: Path) -> Any:
    """Import a script of ``scripts/`` as a module (its ``main()`` does not run) to reuse its model and data."""
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Node:
    """One running ``fabric run`` command (a node of the job)."""

    rank: int
    process: subprocess.Popen[bytes]
    log: Path
    returncode: int | None = None
    ended: float | None = None

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_nodes(
    helpers: Any, workdir: Path, script: Path, script_args: Sequence[str], *, num_nodes: int, options: Sequence[str]
) -> list[Node]:
    """Start ``fabric run --num-nodes N --node-rank K [options] -- script [script_args]`` for every node K, meeting
    on a free port of 127.0.0.1."""
    port = find_free_port()
    env = helpers.command_environment()
    nodes = []
    for node_rank in range(num_nodes):
        log = workdir / f"node{node_rank}.log"
        command = [sys.executable, "-m", "fabric_core.cli", "run", "--num-nodes", str(num_nodes)]
        command += ["--node-rank", str(node_rank), "--main-address", "127.0.0.1", "--main-port", str(port)]
        command += [*options, "--", str(script), *script_args]
        with open(log, "wb") as out:
            process = subprocess.Popen(
                command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        nodes.append(Node(node_rank, process, log))
    return nodes


def all_pids(helpers: Any, nodes: list[Node], pid_dir: Path) -> list[int]:
    """Every process of the job still alive: the commands' sessions and the recorded ranks."""
    alive = set()
    for node in nodes:
        alive.update(helpers.session_processes(node.process.pid))
    ranks = helpers.recorded_ranks(pid_dir)
    alive.update(pid for pid, (_, start) in ranks.items() if helpers.is_alive(pid, start))
    return sorted(alive)


def describe(nodes: list[Node]) -> str:
    return "\n".join(f"--- node {n.rank} exited with {n.returncode}:\n{n.output[-5000:]}" for n in nodes)


def wait_nodes(helpers: Any, nodes: list[Node], pid_dir: Path, timeout: float) -> None:
    """Wait until every command has exited and no process of the job runs; kill everything and fail the test past
    ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in nodes:
            if node.returncode is None and node.process.poll() is not None:
                node.returncode, node.ended = node.process.returncode, time.time()
        if all(node.returncode is not None for node in nodes) and not all_pids(helpers, nodes, pid_dir):
            return
        time.sleep(0.05)
    for pid in [*all_pids(helpers, nodes, pid_dir), *(node.process.pid for node in nodes)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for node in nodes:
        node.process.wait()
    pytest.fail(f"the job did not end within {timeout}s (every process was killed)\n{describe(nodes)}")
