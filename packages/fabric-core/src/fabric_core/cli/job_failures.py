"""Failure reports across the nodes of a multi-node ``fabric run``: each node's output names the failures of all nodes.

Without them, a node whose processes only lost their connection to a failed peer reports those secondary errors
("Connection closed by peer") and nothing says which node and rank failed. So the ``fabric run`` of node 0 hosts the
rendezvous store itself (torchrun's ``c10d`` rendezvous shares the server, ``multi_tenant``) and keeps it while the
nodes exchange reports: a node whose processes failed posts which ranks failed and how, then waits up to
``REPORT_GRACE`` seconds for the reports of the other nodes. A node that posts nothing within that time was lost
(its ``fabric run`` was killed, or its machine went away); a node that cannot reach node 0 says so.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

#: how long a failed node waits for the reports of the other nodes (they fail within moments of each other)
REPORT_GRACE = 3.0
_CONNECT_TIMEOUT = timedelta(seconds=5)
_PREFIX = "fabric-run/failures"


@dataclass(frozen=True)
class NodeReport:
    node_rank: int
    host: str
    order: int  # 1 for the first node to report, 2 for the next, ...
    failures: tuple[str, ...]  # one line per failed process, e.g. "rank 2 (local rank 0, pid 7) failed with ..."


def host_store(address: str, port: int) -> Any:
    """The rendezvous store of the job, hosted by node 0's ``fabric run`` (torchrun's rendezvous shares it)."""
    from fabric_strategies import start_store_server

    return start_store_server(address, port, timeout=_CONNECT_TIMEOUT, multi_tenant=True)


def connect_store(address: str, port: int) -> Any | None:
    """A client of node 0's store, or ``None`` when node 0 cannot be reached."""
    from torch.distributed import TCPStore

    try:
        # a refused connection is known at once; TCPStore would keep retrying it until its timeout
        socket.create_connection((address, port), timeout=_CONNECT_TIMEOUT.total_seconds()).close()
        return TCPStore(address, port, is_master=False, timeout=_CONNECT_TIMEOUT)
    except (RuntimeError, TimeoutError, OSError):
        return None


def exchange_reports(
    store: Any, node_rank: int, num_nodes: int, failures: Sequence[str], *, grace: float = REPORT_GRACE
) -> list[NodeReport] | None:
    """Post this node's failures, then collect every node's report (waiting up to ``grace`` seconds for them).

    Returns the reports in the order they were posted, or ``None`` when the store stopped answering. Node 0 (the
    store's host) also waits, within the same time, until each node has read the reports, so that none finds the
    store gone before it read them.
    """
    deadline = time.monotonic() + grace
    try:
        order = store.add(f"{_PREFIX}/posted", 1)
        report = {"host": socket.gethostname(), "order": order, "failures": list(failures)}
        store.set(f"{_PREFIX}/node{node_rank}", json.dumps(report))
        keys = [f"{_PREFIX}/node{rank}" for rank in range(num_nodes)]
        while not store.check(keys) and time.monotonic() < deadline:
            time.sleep(0.05)
        reports = [_read(store, rank) for rank in range(num_nodes) if store.check([f"{_PREFIX}/node{rank}"])]
        read = store.add(f"{_PREFIX}/read", 1)
        if node_rank == 0:
            while read < len(reports) and time.monotonic() < deadline:
                time.sleep(0.05)
                read = store.add(f"{_PREFIX}/read", 0)
    except (RuntimeError, TimeoutError, OSError):
        return None
    return sorted(reports, key=lambda item: item.order)


def _read(store: Any, node_rank: int) -> NodeReport:
    data = json.loads(store.get(f"{_PREFIX}/node{node_rank}"))
    return NodeReport(node_rank, str(data["host"]), int(data["order"]), tuple(str(f) for f in data["failures"]))


def describe_job(reports: list[NodeReport] | None, num_nodes: int, grace: float = REPORT_GRACE) -> str:
    """The lines ``fabric run`` prints about a failed multi-node job, the node that reported first first."""
    if reports is None:
        return (
            "  node 0, which hosts the rendezvous, cannot be reached: it was lost (its `fabric run` was killed or its"
            " machine is gone), so the reports of the other nodes are unknown"
        )
    lines = [f"  node {r.node_rank} ({r.host}): {'; '.join(r.failures)}" for r in reports]
    reported = {r.node_rank for r in reports}
    lines += [
        f"  node {rank}: sent no report within {grace:g}s: it was lost (its `fabric run` was killed, or its machine is"
        " gone or cannot reach node 0)"
        for rank in range(num_nodes)
        if rank not in reported
    ]
    return "\n".join(lines)
