"""The rendezvous of ``fabric run``: every attempt's store is up before its processes start, and is a new one."""

from __future__ import annotations

from datetime import timedelta

import pytest
from torch.distributed import TCPStore
from torch.distributed.elastic.rendezvous import RendezvousConnectionError, RendezvousParameters

from fabric_core.cli.attempt_store import BACKEND, LocalRendezvous, create_handler, register_backend


def connect(port: int) -> TCPStore:
    return TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=10))


def test_every_attempt_gets_a_new_store_that_is_up_before_its_processes_connect() -> None:
    handler = LocalRendezvous(host="127.0.0.1", port=0, run_id="job")
    try:
        first = handler.next_rendezvous()
        assert (first.rank, first.world_size, handler.use_agent_store) == (0, 1, True)
        assert first.bootstrap_store_info is not None
        # nothing else starts a server there: this connects only because the store is up already
        process_store = connect(first.bootstrap_store_info.master_port)
        process_store.set("rank0/address", "of the first attempt")
        first.store.set("agent-key", "1")

        second = handler.next_rendezvous()
        assert second.bootstrap_store_info is not None
        assert second.bootstrap_store_info.master_port != first.bootstrap_store_info.master_port
        assert not connect(second.bootstrap_store_info.master_port).check(["rank0/address"])
        assert not second.store.check(["agent-key"])  # the launcher's keys are per attempt too
    finally:
        handler.shutdown()
    assert handler.is_closed()


def test_a_busy_main_port_is_a_rendezvous_error() -> None:
    taken = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    handler = LocalRendezvous(host="127.0.0.1", port=taken.port, run_id="job")
    with pytest.raises(RendezvousConnectionError, match=f"127.0.0.1:{taken.port}"):
        handler.next_rendezvous()


def test_torchrun_creates_the_handler_by_name() -> None:
    from torch.distributed.elastic.rendezvous import rendezvous_handler_registry

    register_backend()
    register_backend()  # again: no error
    params = RendezvousParameters(BACKEND, "127.0.0.1:0", "job", min_nodes=1, max_nodes=1)
    handler = rendezvous_handler_registry.create_handler(params)
    assert isinstance(handler, LocalRendezvous)
    assert isinstance(create_handler(params), LocalRendezvous)
    handler.shutdown()
