"""Processes started by Slurm's ``srun``, with opt-in automatic requeueing of the job on a signal."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import warnings
from collections.abc import Callable
from types import FrameType
from typing import Any

from typing_extensions import override

from fabric_environments._env import RankBound, check_world_size, env_int
from fabric_environments._fixed_ranks import FixedRanksEnvironment
from fabric_environments.hostlist import expand_hostlist, expand_task_counts
from fabric_utils import FabricWarning

log = logging.getLogger(__name__)

#: job names under which Slurm runs an interactive shell (``salloc``/``srun --pty bash``): not launched by srun
INTERACTIVE_JOB_NAMES = ("bash", "interactive")
#: the port used when neither MASTER_PORT nor SLURM_JOB_ID is set
DEFAULT_PORT = 12910
_PORT_OFFSET = 15000
_NODELIST_VARIABLES = ("SLURM_NODELIST", "SLURM_JOB_NODELIST")
_SignalHandler = Callable[[int, FrameType | None], Any] | int | None


class SLURMEnvironment(FixedRanksEnvironment):
    """The environment of a task started by ``srun``: ranks and sizes come from the ``SLURM_*`` variables.

    The main address is ``MASTER_ADDR`` when set, otherwise the first host of the job's node list; the main port is
    ``MASTER_PORT`` when set, otherwise derived from the job id so that every task computes the same one.
    Interactive allocations (job name ``bash`` or ``interactive``) are not treated as srun-launched.

    Args:
        requeue_signal: the signal :meth:`enable_auto_requeue` listens to (``SIGUSR1`` by default; ask Slurm to send
            it before the time limit with ``#SBATCH --signal=SIGUSR1@90``).
    """

    name = "slurm"
    detection_priority = 400
    _world_size_variable = "SLURM_NTASKS"
    _global_rank_variable = "SLURM_PROCID"
    _local_rank_variable = "SLURM_LOCALID"

    def __init__(self, *, requeue_signal: signal.Signals | int | None = None) -> None:
        self._requeue_signal = requeue_signal
        self._before_requeue: Callable[[], object] | None = None
        self._previous_handler: _SignalHandler = None
        self._installed_signal: int | None = None
        self._requeue_requested = False

    @override
    def _default_address(self) -> str:
        """The first host of the job's node list (``127.0.0.1`` without one)."""
        for name in _NODELIST_VARIABLES:
            nodelist = os.environ.get(name, "").strip()
            if nodelist:
                return self.resolve_root_node_address(nodelist)
        return super()._default_address()

    @override
    def _default_port(self) -> int:
        """15000 plus the last four digits of ``SLURM_JOB_ID`` (12910 without one)."""
        job_id = os.environ.get("SLURM_JOB_ID", "").strip()
        if not job_id:
            return DEFAULT_PORT
        if not job_id.isdigit():
            raise ValueError(f"SLURM_JOB_ID={job_id!r} must be a number to derive the main port; set MASTER_PORT.")
        return _PORT_OFFSET + int(job_id[-4:])

    @staticmethod
    @override
    def detect() -> bool:
        """Whether srun started this process: ``SLURM_NTASKS`` is set and the job is not an interactive shell."""
        return "SLURM_NTASKS" in os.environ and not SLURMEnvironment.is_interactive()

    @staticmethod
    def job_name() -> str | None:
        return os.environ.get("SLURM_JOB_NAME")

    @staticmethod
    def is_interactive() -> bool:
        """Whether the job is an interactive shell (``salloc``, ``srun --pty bash``), where fabric starts processes."""
        return SLURMEnvironment.job_name() in INTERACTIVE_JOB_NAMES

    @staticmethod
    def job_id() -> int | None:
        """The numeric job id, or ``None`` in an interactive job or outside Slurm."""
        job_id = os.environ.get("SLURM_JOB_ID", "").strip()
        if SLURMEnvironment.is_interactive() or not job_id.isdigit():
            return None
        return int(job_id)

    @staticmethod
    def expand_hostlist(hostlist: str) -> list[str]:
        """Every host of a Slurm host list: ``"node[01-03,7],gpu5"`` -> ``["node01", ..., "node7", "gpu5"]``."""
        return expand_hostlist(hostlist)

    @staticmethod
    def resolve_root_node_address(nodelist: str) -> str:
        """The first host of a Slurm host list; it runs the task with global rank 0."""
        hosts = expand_hostlist(nodelist)
        if not hosts:
            raise ValueError(f"The Slurm node list {nodelist!r} names no host.")
        return hosts[0]

    @override
    def node_rank(self) -> int:
        return self._read("SLURM_NODEID")

    @override
    def validate_ranks(self) -> None:
        """Nothing to check in an interactive job, where fabric starts the processes; else the ``SLURM_*`` ranks."""
        if not self.is_interactive():
            super().validate_ranks()

    @override
    def _local_size(self) -> tuple[str, int | None]:
        """This node's entry of ``SLURM_NTASKS_PER_NODE`` (which may differ between nodes), when it is set."""
        per_node = os.environ.get("SLURM_NTASKS_PER_NODE", "").strip()
        if not per_node:
            return "", None
        counts = expand_task_counts(per_node)
        node = self.node_rank()
        return "SLURM_NTASKS_PER_NODE", counts[node] if 0 <= node < len(counts) else counts[-1]

    @override
    def _rank_bounds(self) -> list[RankBound]:
        """Also ``SLURM_NODEID`` against ``SLURM_NNODES`` when Slurm exports the node count."""
        nodes = env_int("SLURM_NNODES") if os.environ.get("SLURM_NNODES", "").strip() else None
        return [*super()._rank_bounds(), ("SLURM_NODEID", self.node_rank(), "SLURM_NNODES", nodes)]

    @override
    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        """Check fabric's ``devices``/``num_nodes`` against ``--ntasks-per-node``, ``--nodes`` and ``--ntasks``."""
        if self.is_interactive():
            return
        per_node = os.environ.get("SLURM_NTASKS_PER_NODE", "").strip()
        if per_node:
            counts = set(expand_task_counts(per_node))
            if counts != {num_devices}:
                shown = per_node if len(counts) > 1 else str(counts.pop())
                raise ValueError(
                    f"You set devices={num_devices}, but the Slurm job runs --ntasks-per-node={shown} tasks on each"
                    f" node: fabric needs one task per device. HINT: set devices={shown} or"
                    f" #SBATCH --ntasks-per-node={num_devices}."
                )
        nodes = os.environ.get("SLURM_NNODES", "").strip()
        if nodes and env_int("SLURM_NNODES") != num_nodes:
            raise ValueError(
                f"You set num_nodes={num_nodes}, but the Slurm job runs on --nodes={nodes}."
                f" HINT: set num_nodes={nodes} or #SBATCH --nodes={num_nodes}."
            )
        check_world_size(
            "Slurm job",
            self.world_size(),
            num_devices,
            num_nodes,
            hint=f"HINT: use #SBATCH --nodes={num_nodes} --ntasks-per-node={num_devices}.",
        )

    # ------------------------------------------------------------------ auto-requeue

    @property
    def requeue_signal(self) -> int:
        return int(self._requeue_signal if self._requeue_signal is not None else signal.SIGUSR1)

    @override
    def preemption_signals(self) -> tuple[signal.Signals, ...]:
        """:attr:`requeue_signal` in a job started by srun (none in an interactive one): ask Slurm to send it before
        the time limit with ``#SBATCH --signal=USR1@90`` (or ``B:USR1@90`` to the batch script, which forwards it)."""
        return () if self.is_interactive() else (signal.Signals(self.requeue_signal),)

    @property
    def requeue_requested(self) -> bool:
        """True once the requeue signal arrived: the training loop should save and stop."""
        return self._requeue_requested

    def enable_auto_requeue(self, before_requeue: Callable[[], object] | None = None) -> None:
        """Install a handler for :attr:`requeue_signal` that requeues the job with ``scontrol requeue``.

        On every task the handler sets :attr:`requeue_requested` and calls ``before_requeue`` (for example to save a
        checkpoint); the task with global rank 0 then runs ``scontrol requeue <job id>``. A handler installed before
        is called afterwards. Must be called from the main thread; :meth:`disable_auto_requeue` and
        :meth:`teardown` restore the previous handler.
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("enable_auto_requeue() must be called from the main thread: signals arrive there.")
        self._before_requeue = before_requeue
        if self._installed_signal is not None:
            return
        signum = self.requeue_signal
        self._previous_handler = signal.signal(signum, self._handle_requeue_signal)
        self._installed_signal = signum

    def disable_auto_requeue(self) -> None:
        """Restore the handler that was installed before :meth:`enable_auto_requeue`."""
        if self._installed_signal is None:
            return
        previous = self._previous_handler if self._previous_handler is not None else signal.SIG_DFL
        signal.signal(self._installed_signal, previous)
        self._installed_signal = None
        self._previous_handler = None
        self._before_requeue = None

    def requeue_job_id(self) -> str | None:
        """The id ``scontrol requeue`` needs: ``<array job>_<task>`` for array jobs, else ``SLURM_JOB_ID``."""
        array_job = os.environ.get("SLURM_ARRAY_JOB_ID", "").strip()
        array_task = os.environ.get("SLURM_ARRAY_TASK_ID", "").strip()
        if array_job and array_task:
            return f"{array_job}_{array_task}"
        return os.environ.get("SLURM_JOB_ID", "").strip() or None

    def requeue(self) -> bool:
        """Run ``scontrol requeue`` for this job; return whether it succeeded (failures warn, never raise)."""
        job_id = self.requeue_job_id()
        if job_id is None:
            warnings.warn("Cannot requeue: SLURM_JOB_ID is not set.", FabricWarning, stacklevel=2)
            return False
        command = ["scontrol", "requeue", job_id]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            warnings.warn(f"Requeueing Slurm job {job_id} failed: {err}", FabricWarning, stacklevel=2)
            return False
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip()
            warnings.warn(
                f"Requeueing Slurm job {job_id} failed: `{' '.join(command)}` exited with"
                f" {result.returncode}: {output}",
                FabricWarning,
                stacklevel=2,
            )
            return False
        log.info("Requeued Slurm job %s", job_id)
        return True

    def _handle_requeue_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("Received signal %d: requeueing the Slurm job", signum)
        self._requeue_requested = True
        try:
            if self._before_requeue is not None:
                self._before_requeue()
        finally:
            if self._is_rank_zero():
                self.requeue()
        previous = self._previous_handler
        if callable(previous):
            previous(signum, frame)

    def _is_rank_zero(self) -> bool:
        try:
            return env_int("SLURM_PROCID", 0) == 0
        except ValueError as err:
            warnings.warn(f"Not requeueing: {err}", FabricWarning, stacklevel=2)
            return False

    @override
    def teardown(self) -> None:
        self.disable_auto_requeue()
