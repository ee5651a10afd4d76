"""What DeepSpeed expects of the process: rendezvous variables, its accelerator matching ours, its logging level."""

from __future__ import annotations

import copy
import gc
import importlib
import logging
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Any

import torch.distributed as dist
from torch.nn import Module

from fabric_strategies.init_context import SkipParameterInit
from fabric_utils import DEEPSPEED

#: variables DeepSpeed reads from the environment (``LOCAL_RANK`` in its engine and in ``zero.Init``)
RENDEZVOUS_VARIABLES: tuple[str, ...] = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")

# DeepSpeed's accelerator class for each torch device type fabric runs DeepSpeed on
_ACCELERATORS: dict[str, tuple[str, str]] = {
    "cpu": ("deepspeed.accelerator.cpu_accelerator", "CPU_Accelerator"),
    "cuda": ("deepspeed.accelerator.cuda_accelerator", "CUDA_Accelerator"),
}
DEEPSPEED_DEVICE_TYPES: tuple[str, ...] = tuple(_ACCELERATORS)


class EnvironmentPatch:
    """Sets the environment variables that are missing, and on :meth:`restore` removes exactly those again.

    Variables that were set before (by a launcher, the user or a scheduler) are never touched.
    """

    def __init__(self) -> None:
        self._added: dict[str, str] = {}

    @property
    def added(self) -> dict[str, str]:
        """The variables this patch set (and will remove)."""
        return dict(self._added)

    def apply(self, values: Mapping[str, str]) -> None:
        for key, value in values.items():
            if key not in os.environ:
                os.environ[key] = value
                self._added[key] = value

    def restore(self) -> None:
        for key, value in self._added.items():
            if os.environ.get(key) == value:  # changed by someone else since: theirs now
                del os.environ[key]
        self._added.clear()


def align_accelerator(device_type: str) -> None:
    """Make DeepSpeed run on ``device_type`` ("cpu" or "cuda") whatever it detected on this machine.

    DeepSpeed picks its accelerator by probing the hardware (CUDA when a GPU exists); a run that asks fabric for
    the CPU on a GPU machine must move DeepSpeed to the CPU as well.
    """
    if device_type not in _ACCELERATORS:
        raise ValueError(
            f"DeepSpeed runs on {' or '.join(DEEPSPEED_DEVICE_TYPES)} devices with fabric, got {device_type!r} devices."
        )
    DEEPSPEED.require("DeepSpeedStrategy")
    accelerators = importlib.import_module("deepspeed.accelerator")
    if accelerators.get_accelerator().device_name() == device_type:
        return
    module_name, class_name = _ACCELERATORS[device_type]
    accelerator_class = getattr(importlib.import_module(module_name), class_name)
    accelerators.set_accelerator(accelerator_class())


def skip_cpu_comm_op() -> None:
    """Keep DeepSpeed from compiling its CPU shared-memory all-reduce kernel when its communication backend starts.

    On the CPU, DeepSpeed JIT-compiles that C++ kernel on first use (tens of seconds, and a C++ compiler is needed);
    only its inference tensor parallelism uses it, and without it DeepSpeed falls back to the process group's
    all-reduce. DeepSpeed keeps the ops it may build in ``deepspeed.ops.__compatible_ops__``; the kernel is marked
    as not buildable there. Nothing changes once DeepSpeed's backend exists.
    """
    ops = importlib.import_module("deepspeed.ops")
    compatible = getattr(ops, "__compatible_ops__", None)
    builder = importlib.import_module("deepspeed.accelerator").get_accelerator().get_op_builder("ShareMemCommBuilder")
    if isinstance(compatible, dict) and builder is not None:
        compatible[getattr(builder, "NAME", "deepspeed_shm_comm")] = False


def set_logging_level(level: int) -> None:
    """Set the level of DeepSpeed's logger (it reports every engine set-up step at INFO)."""
    if isinstance(level, bool) or not isinstance(level, int):
        raise TypeError(f"logging_level must be a logging level such as logging.WARNING, got {level!r}")
    DEEPSPEED.require("DeepSpeedStrategy")
    importlib.import_module("deepspeed.utils").logger.setLevel(level)


DEFAULT_LOGGING_LEVEL = logging.WARNING


def leave_process_group() -> None:
    """Destroy the default process group through DeepSpeed, which also drops the groups it derived from it.

    DeepSpeed keeps a clone of the world group (and others) in module globals; destroying the group behind its back
    would leave those pointing at a dead group, and a later run in this process would fail with "Group ... is not
    registered". Garbage is collected first, so objects holding the group go away while it still exists.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    DEEPSPEED.require("DeepSpeedStrategy")
    comm = importlib.import_module("deepspeed.comm")
    if comm.is_initialized():  # DeepSpeed was handed the group (otherwise the strategy destroys it alone)
        comm.destroy_process_group()


def zero3_init_context(config: Mapping[str, Any], remote_device: str | None, skip_init: bool) -> ExitStack:
    """``deepspeed.zero.Init``: modules created inside are partitioned across processes as they are built.

    ``skip_init`` also skips their initialisation (the values are undefined until weights are loaded).
    """
    deepspeed = DEEPSPEED.require("DeepSpeedStrategy")
    stack = ExitStack()
    if skip_init:
        stack.enter_context(SkipParameterInit())
    stack.enter_context(
        deepspeed.zero.Init(config_dict_or_path=copy.deepcopy(dict(config)), remote_device=remote_device, enabled=True)
    )
    return stack


def gathered_parameters(module: Module, modifier_rank: int | None) -> AbstractContextManager[Any]:
    """The context in which a ZeRO-3 module's full parameters exist on every process (nothing for other modules).

    With ``modifier_rank``, changes made on that rank are partitioned back to every process on exit.
    """
    parameters = list(module.parameters())
    if not any(hasattr(p, "ds_id") for p in parameters):
        return nullcontext()
    deepspeed = DEEPSPEED.require("DeepSpeedStrategy")
    return deepspeed.zero.GatheredParameters(parameters, modifier_rank=modifier_rank)  # type: ignore[no-any-return]
