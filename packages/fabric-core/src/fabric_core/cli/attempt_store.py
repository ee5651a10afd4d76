"""The rendezvous of ``fabric run``: a fresh store for every attempt, hosted by the launcher before its processes start.

The processes of an attempt form their process group (``init_process_group`` with ``env://`` or ``tcp://``) through
a TCPStore at ``MASTER_ADDR:MASTER_PORT``. torchrun's default shares one such store, hosted by its launcher, between
all attempts of a job, so restarted processes find the keys of the failed attempt in it (gloo then connects to the
dead processes: "connectFullMesh failed"). With ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` torchrun gives each attempt
a store of its own, but the process of rank 0 hosts it: every other process that asks for it before rank 0 has
started it waits out TCPStore's connection back-off (0.3-1 s here), which happens at most starts of a job.

So the store of each attempt is started by the launcher, before the attempt's processes are, and the processes
connect to it as clients (``TORCHELASTIC_USE_AGENT_STORE=True``, as with torchrun's shared store). The previous
attempt's store is closed when the next attempt forms, the last one when the rendezvous shuts down.

- One node: ``LocalRendezvous`` hosts the job's store on ``--main-address:--main-port`` (any free port when no port
  was given), numbers this node 0 of 1, and starts each attempt's store on a free port. It has no use for the
  ``c10d`` rendezvous's membership protocol (heartbeats, a random start delay of up to 0.3 s).
- Several nodes: ``FreshStoreRendezvous`` wraps torchrun's ``c10d`` rendezvous handler, which numbers the nodes and
  publishes the address and a free port of the node that gets rendezvous rank 0 for each attempt (as with
  ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``); that node's launcher starts the attempt's store there.

``register_backend()`` makes ``BACKEND`` known to torchrun's rendezvous registry.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from torch.distributed import PrefixStore
from torch.distributed.elastic.rendezvous import (
    RendezvousConnectionError,
    RendezvousHandler,
    RendezvousInfo,
    RendezvousParameters,
    RendezvousStoreInfo,
    rendezvous_handler_registry,
)
from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint

#: the name under which ``fabric run`` asks torchrun's launcher for this rendezvous
BACKEND = "fabric"
#: how long a store operation of the launcher may wait (torch's c10d rendezvous uses the same default)
_STORE_TIMEOUT = timedelta(seconds=60)


def register_backend() -> None:
    """Make ``BACKEND`` known to torchrun's rendezvous registry (once per process; calling again does nothing)."""
    rendezvous_handler_registry.register(BACKEND, create_handler)


def create_handler(params: RendezvousParameters) -> RendezvousHandler:
    """The handler for ``params``: ``LocalRendezvous`` for one node, else ``c10d`` with a fresh store per attempt."""
    if params.max_nodes == 1:
        host, port = parse_rendezvous_endpoint(params.endpoint, default_port=0)
        return LocalRendezvous(host=host, port=port, run_id=params.run_id)
    from torch.distributed.elastic.rendezvous import c10d_rendezvous_backend, dynamic_rendezvous

    backend, store = c10d_rendezvous_backend.create_backend(params)
    return FreshStoreRendezvous(dynamic_rendezvous.create_handler(store, backend, params))


def start_store(address: str, port: int = 0, *, purpose: str = "the store of the processes") -> Any:
    """Start a TCPStore server on ``port`` (0: any free port); a failure is a ``RendezvousConnectionError``."""
    from fabric_strategies import start_store_server

    try:
        return start_store_server(address, port, timeout=_STORE_TIMEOUT)
    except (RuntimeError, OSError) as err:
        where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        raise RendezvousConnectionError(f"cannot start {purpose} on {where}: {err}") from err


class LocalRendezvous(RendezvousHandler):
    """The rendezvous of a job on one node: this node is rank 0 of 1; every attempt gets a new store."""

    def __init__(self, *, host: str, port: int, run_id: str) -> None:
        self._host = host
        self._port = port
        self._run_id = run_id
        self._job_store: Any = None
        self._attempt_store: Any = None
        self._attempts = 0
        self._closed = False

    def get_backend(self) -> str:
        return BACKEND

    @property
    def use_agent_store(self) -> bool:
        return True

    def next_rendezvous(self) -> RendezvousInfo:
        if self._job_store is None:
            # the launcher's own keys (rank assignment, exit barrier), on the job's port like torchrun's rendezvous
            self._job_store = start_store(self._host, self._port, purpose="the rendezvous store")
        self._attempt_store = None  # the processes of the previous attempt were stopped before this one forms
        self._attempt_store = start_store(self._host)
        store = PrefixStore(f"{self._run_id}/attempt{self._attempts}", self._job_store)
        self._attempts += 1
        return RendezvousInfo(store, 0, 1, RendezvousStoreInfo(self._host, int(self._attempt_store.port)))

    def is_closed(self) -> bool:
        return self._closed

    def set_closed(self) -> None:
        self._closed = True

    def num_nodes_waiting(self) -> int:
        return 0

    def get_run_id(self) -> str:
        return self._run_id

    def shutdown(self) -> bool:
        self._closed = True
        self._attempt_store = None
        self._job_store = None
        return True


class FreshStoreRendezvous(RendezvousHandler):
    """torchrun's ``c10d`` rendezvous (``inner``); the node of rendezvous rank 0 hosts each attempt's store.

    The inner handler publishes a free port of that node for each attempt when ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE``
    is ``1`` (``fabric run`` sets it unless it is set); otherwise it hosts one store for the job itself, and this
    handler only passes its answers on.
    """

    def __init__(self, inner: RendezvousHandler) -> None:
        self._inner = inner
        self._attempt_store: Any = None

    def get_backend(self) -> str:
        return BACKEND  # torchrun's registry checks that the handler answers with the name it was created for

    @property
    def use_agent_store(self) -> bool:
        return True

    def next_rendezvous(self) -> RendezvousInfo:
        self._attempt_store = None  # the processes of the previous attempt were stopped before this one forms
        info = self._inner.next_rendezvous()
        store_info = info.bootstrap_store_info
        if not self._inner.use_agent_store and info.rank == 0 and store_info is not None:
            self._attempt_store = start_store(store_info.master_addr, store_info.master_port)
        return info

    def is_closed(self) -> bool:
        return self._inner.is_closed()

    def set_closed(self) -> None:
        self._inner.set_closed()

    def num_nodes_waiting(self) -> int:
        return self._inner.num_nodes_waiting()

    def get_run_id(self) -> str:
        return self._inner.get_run_id()

    def shutdown(self) -> bool:
        try:
            return self._inner.shutdown()
        finally:
            self._attempt_store = None
