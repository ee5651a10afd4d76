"""The failure reports that the nodes of a multi-node ``fabric run`` exchange, over a real TCPStore (threads as nodes).

The end-to-end runs (two ``fabric run`` commands, a failing or killed node) are in tests-integration/test_multi_node.py.
"""

from __future__ import annotations

import re
import threading
import time

from fabric_core.cli.job_failures import connect_store, describe_job, exchange_reports, host_store
from fabric_testing import find_free_port


def test_each_node_gets_the_reports_of_all_nodes_in_the_order_they_were_posted():
    port = find_free_port()
    host = host_store("127.0.0.1", port)
    results = {}

    def node(rank: int, delay: float) -> None:
        time.sleep(delay)
        store = host if rank == 0 else connect_store("127.0.0.1", port)
        results[rank] = exchange_reports(store, rank, 3, [f"rank {rank * 2} failed with exit code {rank}"], grace=10)

    threads = [threading.Thread(target=node, args=(rank, delay)) for rank, delay in ((0, 1.2), (1, 0.0), (2, 0.6))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(results) == {0, 1, 2}
    for reports in results.values():
        assert reports is not None
        assert [r.node_rank for r in reports] == [1, 2, 0]
        assert [r.order for r in reports] == [1, 2, 3]
        assert reports[0].failures == ("rank 2 failed with exit code 1",)
    text = describe_job(results[0], 3)
    assert re.search(r"^  node 1 \(.+\): rank 2 failed with exit code 1$", text, re.MULTILINE), text


def test_a_node_that_posts_nothing_is_named_as_lost_after_the_grace_period():
    host = host_store("127.0.0.1", find_free_port())
    started = time.monotonic()
    reports = exchange_reports(host, 0, 2, ["rank 0 failed with exit code 1"], grace=0.5)
    assert 0.5 <= time.monotonic() - started < 5
    assert reports is not None
    assert [r.node_rank for r in reports] == [0]
    text = describe_job(reports, 2, grace=0.5)
    assert "node 1: sent no report within 0.5s: it was lost" in text, text


def test_node_zero_out_of_reach_is_said_so():
    assert connect_store("127.0.0.1", find_free_port()) is None
    assert re.search(r"node 0, which hosts the rendezvous, cannot be reached: it was lost", describe_job(None, 2))
