"""``DDPStrategy``: one process per device, gradients averaged by ``DistributedDataParallel``."""

from __future__ import annotations

import inspect
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

import torch
from torch.nn import Module
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from fabric_strategies.inherited_parameters import check_passed_keywords, takes_parameters_of
from fabric_strategies.parallel import START_METHOD_POPEN, ParallelStrategy
from fabric_strategies.teardown import track_ddp_wrapper


def ddp_keywords() -> list[str]:
    """The keyword arguments ``DistributedDataParallel`` accepts besides the module."""
    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    return [name for name in parameters if name not in ("self", "module")]


class DDPStrategy(ParallelStrategy):
    """Data-parallel training with DistributedDataParallel, one process per device.

    Args:
        process_group_backend: "gloo", "nccl", ...; by default nccl for CUDA devices and gloo otherwise.
        timeout: how long collectives wait for the other processes before failing.
        start_method: how the local processes start: "popen" runs the script again for each extra process;
            "spawn", "fork" and "forkserver" start them with ``multiprocessing`` and call the launched function.
        **kwargs: passed to ``DistributedDataParallel`` (``find_unused_parameters``, ``static_graph``, ...).
    """

    name: ClassVar[str] = "ddp"
    _start_method_required: ClassVar[bool] = True

    @takes_parameters_of(ParallelStrategy, START_METHOD_POPEN)
    def __init__(self, inherited: dict[str, Any], /, **kwargs: Any) -> None:
        super().__init__(**inherited)
        refusal = "DDPStrategy got keyword arguments {} that DistributedDataParallel does not accept."
        check_passed_keywords(kwargs, ddp_keywords(), refusal)
        self._ddp_kwargs = kwargs

    @property
    def ddp_kwargs(self) -> dict[str, Any]:
        """The keyword arguments given to ``DistributedDataParallel``."""
        return dict(self._ddp_kwargs)

    @override
    def setup_module(self, module: Module) -> DistributedDataParallel:
        device = self.root_device
        kwargs = dict(self._ddp_kwargs)
        if device.type == "cuda":
            kwargs.setdefault("device_ids", [device.index if device.index is not None else 0])
            # DDP's initial broadcast runs on a side stream, so it does not wait for work queued on the default one
            with torch.cuda.stream(torch.cuda.Stream(device)):
                wrapped = DistributedDataParallel(module, **kwargs)
        else:
            wrapped = DistributedDataParallel(module, **kwargs)
        track_ddp_wrapper(wrapped)
        return wrapped

    @override
    def no_backward_sync(self, module: Module, enabled: bool) -> AbstractContextManager[Any]:
        """Skip the gradient all-reduce of backward passes in the context (gradient accumulation)."""
        if not enabled:
            return nullcontext()
        if not isinstance(module, DistributedDataParallel):
            raise TypeError(
                "no_backward_sync needs the module that DDPStrategy.setup_module returned (a DistributedDataParallel),"
                f" got {type(module).__name__}"
            )
        return module.no_sync()

    @override
    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(start_method={self._start_method!r}, backend={self._process_group_backend!r},"
            f" timeout={self._timeout}, ddp_kwargs={self._ddp_kwargs})"
        )
