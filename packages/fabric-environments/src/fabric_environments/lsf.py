"""Processes started by IBM LSF's ``jsrun`` (e.g. on Summit-class machines)."""

from __future__ import annotations

import os
import socket

from typing_extensions import override

from fabric_environments._env import check_world_size
from fabric_environments._fixed_ranks import FixedRanksEnvironment

_JSM_VARIABLES = ("JSM_NAMESPACE_SIZE", "JSM_NAMESPACE_LOCAL_RANK")
_HOST_SOURCES = ("LSB_DJOB_RANKFILE", "LSB_MCPU_HOSTS")
_PORT_BASE = 10000


class LSFEnvironment(FixedRanksEnvironment):
    """The environment of a task started by ``jsrun`` inside an LSF job.

    Ranks and sizes come from ``JSM_NAMESPACE_SIZE``, ``JSM_NAMESPACE_RANK`` and ``JSM_NAMESPACE_LOCAL_RANK``. The
    job's hosts come from the rank file named by ``LSB_DJOB_RANKFILE`` (one line per slot) or, without it, from
    ``LSB_MCPU_HOSTS`` (``host count host count ...``, expanded to one entry per slot). In both lists the first
    entry is the launch node's slot, which runs no task, and is skipped when other entries follow. The main address
    is ``MASTER_ADDR`` or the first compute host; the main port is ``MASTER_PORT`` or ``10000 + LSB_JOBID % 1000``.
    The node rank is this host's position among the distinct compute hosts.
    """

    name = "lsf"
    detection_priority = 300
    _world_size_variable = "JSM_NAMESPACE_SIZE"
    _global_rank_variable = "JSM_NAMESPACE_RANK"
    _local_rank_variable = "JSM_NAMESPACE_LOCAL_RANK"

    def __init__(self) -> None:
        self._hosts: list[str] | None = None

    @override
    def _default_address(self) -> str:
        return self.compute_hosts()[0]

    @override
    def _default_port(self) -> int:
        return _PORT_BASE + self._read("LSB_JOBID") % 1000

    @staticmethod
    @override
    def detect() -> bool:
        """An LSF job (``LSB_JOBID``) whose task jsrun started (``JSM_NAMESPACE_*``) and whose hosts are listed."""
        env = os.environ
        return (
            "LSB_JOBID" in env
            and all(name in env for name in _JSM_VARIABLES)
            and any(name in env for name in _HOST_SOURCES)
        )

    @override
    def node_rank(self) -> int:
        """This host's index among the job's distinct compute hosts, in the order LSF lists them."""
        unique = list(dict.fromkeys(self.compute_hosts()))
        hostname = socket.gethostname()
        if hostname in unique:
            return unique.index(hostname)
        short_names = [host.split(".")[0] for host in unique]
        if hostname.split(".")[0] in short_names:
            return short_names.index(hostname.split(".")[0])
        raise ValueError(f"This host {hostname!r} is not among the LSF job's compute hosts {unique}.")

    @override
    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        check_world_size(
            "jsrun launcher",
            self.world_size(),
            num_devices,
            num_nodes,
            hint=f"HINT: start {num_devices} tasks on each of {num_nodes} nodes with jsrun.",
        )

    def compute_hosts(self) -> list[str]:
        """The job's compute hosts, one entry per slot (read once, then cached)."""
        if self._hosts is None:
            hosts = _read_rankfile() if os.environ.get("LSB_DJOB_RANKFILE") else _read_mcpu_hosts()
            self._hosts = hosts[1:] if len(hosts) > 1 else hosts
        return self._hosts


def _read_rankfile() -> list[str]:
    path = os.environ["LSB_DJOB_RANKFILE"]
    try:
        with open(path) as f:
            hosts = [line.strip() for line in f if line.strip()]
    except OSError as err:
        raise ValueError(f"Cannot read the LSF rank file LSB_DJOB_RANKFILE={path!r}: {err}") from None
    if not hosts:
        raise ValueError(f"The LSF rank file LSB_DJOB_RANKFILE={path!r} lists no host.")
    return hosts


def _read_mcpu_hosts() -> list[str]:
    raw = os.environ.get("LSB_MCPU_HOSTS", "")
    fields = raw.split()
    if not fields or len(fields) % 2:
        raise ValueError(f"LSB_MCPU_HOSTS={raw!r} must list pairs of host and slot count, e.g. 'host1 4 host2 4'.")
    hosts: list[str] = []
    for host, count in zip(fields[::2], fields[1::2]):
        if not count.isdigit():
            raise ValueError(f"LSB_MCPU_HOSTS={raw!r}: the slot count {count!r} of host {host!r} is not a number.")
        hosts.extend([host] * int(count))
    return hosts
