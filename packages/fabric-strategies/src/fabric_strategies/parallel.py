"""``ParallelStrategy``: the base of strategies that run several processes."""

from __future__ import annotations

from abc import ABC
from collections.abc import Sequence
from datetime import timedelta
from inspect import Parameter
from typing import Any, ClassVar, Literal, get_args

import torch
import torch.distributed as dist
from torch import Tensor
from typing_extensions import override

from fabric_accelerators import Accelerator
from fabric_environments import ClusterEnvironment, LightningEnvironment
from fabric_io import CheckpointIO
from fabric_precision import Precision
from fabric_strategies.base import Parts, Strategy
from fabric_strategies.checkpoint import StateFilter
from fabric_strategies.collectives.functional import (
    all_gather_tensor,
    all_reduce_tensor,
    broadcast_object,
    distributed_ready,
)
from fabric_strategies.collectives.torch_collective import TorchCollective
from fabric_strategies.launchers.base import Launcher
from fabric_strategies.launchers.multiprocessing import MultiprocessingLauncher
from fabric_strategies.launchers.subprocess_script import SubprocessScriptLauncher
from fabric_strategies.process_group import (
    DEFAULT_TIMEOUT,
    check_backend,
    default_process_group_backend,
    init_process_group,
)
from fabric_strategies.teardown import destroy_process_group_cleanly, release_tracked_wrappers
from fabric_utils import PathLike, check_num_nodes, check_reduce_op, rank_zero_only

#: how a strategy starts its local processes: "popen" runs the script again for each extra process; "spawn", "fork"
#: and "forkserver" start them with ``multiprocessing`` and call the launched function
StartMethod = Literal["popen", "spawn", "fork", "forkserver"]
START_METHODS: tuple[str, ...] = get_args(StartMethod)
#: ``start_method`` as the strategies that always start their processes take it: "popen" unless told otherwise
START_METHOD_POPEN = Parameter("start_method", Parameter.KEYWORD_ONLY, default="popen", annotation="StartMethod")
#: the parts of the strategies that choose their cluster environment themselves (all but ``cluster_environment``)
PARTS_BUT_ENVIRONMENT = ("accelerator", "parallel_devices", "checkpoint_io", "precision")


def _as_devices(devices: Sequence[torch.device | str] | None) -> list[torch.device] | None:
    if devices is None:
        return None
    if isinstance(devices, (str, torch.device)) or not isinstance(devices, Sequence):
        raise TypeError(f"parallel_devices must be a list of devices, got {devices!r}")
    if not devices:
        raise ValueError("parallel_devices must hold at least one device, got an empty list")
    return [torch.device(d) for d in devices]


def _check_start_method(start_method: StartMethod | None, *, required: bool) -> StartMethod | None:
    if (start_method is not None or required) and start_method not in START_METHODS:
        raise ValueError(f"Unknown start_method {start_method!r}. Choose one of: {', '.join(START_METHODS)}")
    return start_method


def _check_timeout(timeout: timedelta | None) -> timedelta:
    if timeout is not None and not isinstance(timeout, timedelta):
        raise TypeError(f"timeout must be a datetime.timedelta, got {timeout!r}")
    return DEFAULT_TIMEOUT if timeout is None else timeout


class ParallelStrategy(Strategy, ABC):
    """Several processes, one per device in ``parallel_devices`` on each of ``num_nodes`` machines.

    Ranks come from the cluster environment (``LightningEnvironment`` unless one is given or completed).
    Collectives communicate over the default process group once ``setup_environment`` created it; before that they
    act locally.

    Args:
        process_group_backend: "gloo", "nccl", ...; by default nccl for CUDA devices and gloo otherwise.
        timeout: how long collectives wait for the other processes before failing.
        start_method: how this strategy starts the local processes ("popen" runs the script again for each extra
            process; "spawn", "fork" and "forkserver" start them with ``multiprocessing``); with one, it also
            creates the default process group in ``setup_environment``. ``None`` (the default here): it does
            neither, and leaves both to a subclass, a test harness or the user.
    """

    #: True in strategies that always start their processes and create the process group (``None`` is refused)
    _start_method_required: ClassVar[bool] = False
    #: why ``save_checkpoint`` refuses ``storage_options`` (an engine writes the files); None: it passes them on
    _no_storage_options: ClassVar[str | None] = None

    def __init__(
        self,
        accelerator: Accelerator | None = None,
        parallel_devices: Sequence[torch.device | str] | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        checkpoint_io: CheckpointIO | None = None,
        precision: Precision | None = None,
        *,
        process_group_backend: str | None = None,
        timeout: timedelta | None = DEFAULT_TIMEOUT,
        start_method: StartMethod | None = None,
    ) -> None:
        super().__init__(accelerator=accelerator, checkpoint_io=checkpoint_io, precision=precision)
        if cluster_environment is not None and not isinstance(cluster_environment, ClusterEnvironment):
            raise TypeError(f"`cluster_environment` must be a ClusterEnvironment instance, got {cluster_environment!r}")
        self._parallel_devices = _as_devices(parallel_devices)
        self._start_method = _check_start_method(start_method, required=self._start_method_required)
        self._timeout = _check_timeout(timeout)
        self._process_group_backend = None if process_group_backend is None else check_backend(process_group_backend)
        self._cluster_environment = cluster_environment
        self._fallback_environment: ClusterEnvironment | None = None
        self._num_nodes: int | None = None
        self._local_rank: int | None = None  # set in the processes a MultiprocessingLauncher starts
        self._owns_process_group = False
        self._collective: TorchCollective | None = None

    # -- parts ---------------------------------------------------------------------------------------------------
    @property
    def cluster_environment(self) -> ClusterEnvironment:
        if self._cluster_environment is not None:
            return self._cluster_environment
        if self._fallback_environment is None:
            self._fallback_environment = LightningEnvironment()
        return self._fallback_environment

    @property
    def parallel_devices(self) -> list[torch.device]:
        """The device of each local process (one CPU process when nobody said otherwise)."""
        return list(self._parallel_devices) if self._parallel_devices is not None else [torch.device("cpu")]

    @property
    def num_nodes(self) -> int:
        return self._num_nodes if self._num_nodes is not None else 1

    @property
    def num_processes(self) -> int:
        """Processes per node."""
        return len(self.parallel_devices)

    @property
    def process_group_backend(self) -> str:
        """The backend given to the constructor, or the default for the root device (nccl on CUDA, gloo else)."""
        if self._process_group_backend is not None:
            return self._process_group_backend
        return default_process_group_backend(self.root_device)

    @property
    def timeout(self) -> timedelta:
        """How long collectives wait for the other processes before failing."""
        return self._timeout

    @property
    def start_method(self) -> StartMethod | None:
        """How this strategy starts the local processes (``None``: it starts none itself)."""
        return self._start_method

    @override
    def _complete(self, parts: Parts) -> None:
        super()._complete(parts)
        if self._cluster_environment is None and parts.cluster_environment is not None:
            if not isinstance(parts.cluster_environment, ClusterEnvironment):
                raise TypeError(
                    f"`cluster_environment` must be a ClusterEnvironment, got {parts.cluster_environment!r}"
                )
            self._cluster_environment = parts.cluster_environment
        if self._parallel_devices is None and parts.parallel_devices is not None:
            self._parallel_devices = _as_devices(parts.parallel_devices)
        if self._num_nodes is None and parts.num_nodes is not None:
            self._num_nodes = check_num_nodes(parts.num_nodes)
        self._set_world_ranks()

    def _set_local_rank(self, local_rank: int) -> None:
        """Fix this process's local rank (used by launchers that start the processes themselves)."""
        self._local_rank = local_rank
        self._set_world_ranks()

    def _set_world_ranks(self) -> None:
        environment = self.cluster_environment
        if environment.creates_processes_externally and self._local_rank is None:
            return  # the external launcher fixed ranks and sizes
        environment.set_global_rank(self.node_rank * self.num_processes + self.local_rank)
        environment.set_world_size(self.num_nodes * self.num_processes)

    # -- where this process runs ---------------------------------------------------------------------------------
    @property
    @override
    def root_device(self) -> torch.device:
        devices = self.parallel_devices
        local_rank = self.local_rank
        if local_rank >= len(devices):
            raise ValueError(
                f"Local rank {local_rank} has no device: parallel_devices holds {len(devices)} ({devices})."
            )
        return devices[local_rank]

    @property
    @override
    def world_size(self) -> int:
        return self.cluster_environment.world_size()

    @property
    @override
    def global_rank(self) -> int:
        return self.cluster_environment.global_rank()

    @property
    @override
    def local_rank(self) -> int:
        return self._local_rank if self._local_rank is not None else self.cluster_environment.local_rank()

    @property
    @override
    def node_rank(self) -> int:
        return self.cluster_environment.node_rank()

    @property
    @override
    def distributed_sampler_kwargs(self) -> dict[str, Any] | None:
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    @property
    def collective(self) -> TorchCollective:
        """The ``TorchCollective`` of the default process group (for primitives the strategy does not offer)."""
        if self._collective is None:
            self._collective = TorchCollective()
        return self._collective

    @override
    def _configure_launcher(self) -> Launcher | None:
        """None under an external launcher or without a start method; else the launcher of the start method."""
        if self._start_method is None:
            return None
        environment = self.cluster_environment
        if environment.creates_processes_externally:
            return None
        if self._start_method == "popen":
            return SubprocessScriptLauncher(environment, self.num_processes, self.num_nodes)
        return MultiprocessingLauncher(self, start_method=self._start_method)

    @override
    def setup_environment(self) -> None:
        self._set_world_ranks()
        super().setup_environment()
        self._owns_process_group = self._setup_process_group() or self._owns_process_group
        rank_zero_only.rank = self.global_rank

    def _setup_process_group(self) -> bool:
        """Create the default process group if needed (with a start method); return whether this strategy did."""
        if self._start_method is None:
            return False
        return init_process_group(self.cluster_environment, self.process_group_backend, self._timeout)

    # -- collectives ---------------------------------------------------------------------------------------------
    @override
    def all_reduce(self, tensor: Tensor | float, group: Any | None = None, reduce_op: Any = "mean") -> Tensor:
        check_reduce_op(reduce_op)
        if not isinstance(tensor, Tensor):
            tensor = torch.tensor(tensor, device=self.root_device)
        return all_reduce_tensor(tensor, group=group, reduce_op=reduce_op)

    @override
    def all_gather(self, tensor: Tensor, group: Any | None = None, sync_grads: bool = False) -> Tensor | list[Tensor]:
        return all_gather_tensor(tensor, group=group, sync_grads=sync_grads)

    @override
    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if not 0 <= src < self.world_size:
            raise ValueError(f"src={src!r} is not a rank of this run: choose one between 0 and {self.world_size - 1}")
        return broadcast_object(obj, src)

    @override
    def barrier(self, name: str | None = None) -> None:
        if not distributed_ready():
            return
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[self.root_device.index or 0])
        else:
            dist.barrier()

    @override
    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        votes = self.all_reduce(torch.tensor(int(bool(decision)), device=self.root_device), reduce_op="sum")
        return bool(votes == self.world_size) if all else bool(votes > 0)

    @override
    def save_checkpoint(
        self,
        path: PathLike,
        state: Any,
        storage_options: Any | None = None,
        filter: StateFilter | None = None,
    ) -> None:
        """Write with ``_write_checkpoint`` (here: rank 0 writes one file); every rank then waits, so a load right
        after the save sees the checkpoint on every rank."""
        if storage_options is not None and self._no_storage_options is not None:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint takes no storage_options (got {storage_options!r}):"
                f" {self._no_storage_options}"
            )
        self._write_checkpoint(path, state, storage_options, filter)
        self.barrier("save_checkpoint")

    def _write_checkpoint(self, path: PathLike, state: Any, storage_options: Any, filter: StateFilter | None) -> None:
        super().save_checkpoint(path, state, storage_options=storage_options, filter=filter)

    # -- end -------------------------------------------------------------------------------------------------------
    @override
    def teardown(self) -> None:
        """Destroy the process group this strategy created (cleanly), then release the other parts."""
        if self._collective is not None:
            self._collective.teardown()
        if self._owns_process_group:
            destroy_process_group_cleanly()
            self._owns_process_group = False
        else:
            release_tracked_wrappers()
        self.cluster_environment.teardown()
        super().teardown()

    def __getstate__(self) -> dict[str, Any]:
        # a launcher belongs to the process that launches; the copies a launcher sends to its processes configure
        # their own
        state = dict(vars(self))
        state["_launcher"] = None
        state["_launcher_configured"] = False
        return state
