"""``DeepSpeedConfig``: DeepSpeed's most used options as a keyword-only dataclass, and loading raw configs."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from fabric_strategies.inherited_parameters import check_passed_keywords

ZeroStage = Literal[0, 1, 2, 3]
OffloadDevice = Literal["cpu", "nvme"]
ZERO_STAGES: tuple[int, ...] = get_args(ZeroStage)
OFFLOAD_DEVICES: tuple[str, ...] = get_args(OffloadDevice)

#: DeepSpeed needs a batch size in its config; it only uses it for throughput logging when fabric drives the loop
_BATCH_SIZE_KEYS = ("train_micro_batch_size_per_gpu", "train_batch_size")


def _check_choice(name: str, value: object, choices: tuple[Any, ...]) -> None:
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"Unknown {name} {value!r}. Choose one of: {', '.join(map(str, choices))}")


def _check_positive(name: str, value: object, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise ValueError(f"{name} must be a number >= {low}, got {value!r}")


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class DeepSpeedConfig:
    """DeepSpeed's options, turned into its JSON config by :meth:`to_dict`.

    Args:
        stage: the ZeRO stage: 0 (off), 1 (shard optimizer states), 2 (+ gradients), 3 (+ parameters).
        offload_optimizer: keep optimizer states (and the step) on ``offload_optimizer_device`` (ZeRO-Offload).
        offload_parameters: keep parameters on ``offload_params_device`` while unused (ZeRO-3 only).
        offload_optimizer_device, offload_params_device: "cpu" or "nvme" (the latter under ``nvme_path``).
        nvme_path: the directory of the NVMe swap files.
        params_buffer_count, params_buffer_size, max_in_cpu: buffers of parameter offload (ZeRO-Infinity).
        optimizer_buffer_count: buffers of optimizer offload to NVMe.
        pin_memory: page-lock offloaded tensors (faster transfers, more host memory).
        block_size, queue_depth, single_submit, overlap_events, thread_count: asynchronous I/O for NVMe offload.
        sub_group_size: parameters per ZeRO-3 optimizer sub-group (smaller: less memory, more steps).
        contiguous_gradients: copy gradients into one buffer as they are produced (less fragmentation).
        overlap_comm: overlap gradient reduction with the backward computation.
        allgather_partitions: all-gather updated partitions at the end of a step (else a series of broadcasts).
        reduce_scatter: reduce gradients with reduce-scatter instead of all-reduce.
        allgather_bucket_size, reduce_bucket_size: elements per communication bucket.
        zero_allow_untested_optimizer: allow optimizers DeepSpeed has not tested with ZeRO (any torch optimizer).
        force_ds_cpu_optimizer: with optimizer offload, insist on DeepSpeed's compiled CPU Adam (False lets torch
            optimizers run on the offloaded states).
        logging_batch_size_per_gpu: the micro-batch size DeepSpeed reports throughput with (fabric drives the loop).
        gradient_clipping: clip gradients to this total norm in ``engine.step`` (0: no clipping).
        remote_device: where ``init_module`` creates ZeRO-3 parameters ("cpu", "nvme"; None: the device).
        partition_activations, cpu_checkpointing, contiguous_memory_optimization, synchronize_checkpoint_boundary:
            DeepSpeed's activation-checkpointing options.
        extra: more top-level DeepSpeed config entries, merged last (nested dicts are merged key by key).
    """

    stage: ZeroStage = 2
    offload_optimizer: bool = False
    offload_parameters: bool = False
    offload_optimizer_device: OffloadDevice = "cpu"
    offload_params_device: OffloadDevice = "cpu"
    nvme_path: str = "/local_nvme"
    params_buffer_count: int = 5
    params_buffer_size: int = 100_000_000
    max_in_cpu: int = 1_000_000_000
    optimizer_buffer_count: int = 4
    pin_memory: bool = False
    block_size: int = 1_048_576
    queue_depth: int = 8
    single_submit: bool = False
    overlap_events: bool = True
    thread_count: int = 1
    sub_group_size: int = 1_000_000_000_000
    contiguous_gradients: bool = True
    overlap_comm: bool = True
    allgather_partitions: bool = True
    reduce_scatter: bool = True
    allgather_bucket_size: int = 200_000_000
    reduce_bucket_size: int = 200_000_000
    zero_allow_untested_optimizer: bool = True
    force_ds_cpu_optimizer: bool = False
    logging_batch_size_per_gpu: int = 1
    gradient_clipping: float = 0.0
    remote_device: OffloadDevice | None = None
    partition_activations: bool = False
    cpu_checkpointing: bool = False
    contiguous_memory_optimization: bool = False
    synchronize_checkpoint_boundary: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_choice("ZeRO stage", self.stage, ZERO_STAGES)
        _check_choice("offload_optimizer_device", self.offload_optimizer_device, OFFLOAD_DEVICES)
        _check_choice("offload_params_device", self.offload_params_device, OFFLOAD_DEVICES)
        if self.remote_device is not None:
            _check_choice("remote_device", self.remote_device, OFFLOAD_DEVICES)
        for name in (f.name for f in fields(self)):
            value = getattr(self, name)
            default = type(self).__dataclass_fields__[name].default
            if isinstance(default, bool):
                _check_flag(name, value)
            elif isinstance(default, int) and name != "stage":
                _check_positive(name, value)
        _check_positive("gradient_clipping", self.gradient_clipping, allow_zero=True)
        if not isinstance(self.nvme_path, (str, os.PathLike)):
            raise TypeError(f"nvme_path must be a path, got {self.nvme_path!r}")
        if self.offload_parameters and self.stage != 3:
            raise ValueError(
                "offload_parameters=True needs ZeRO stage 3 (parameters are sharded only there), got"
                f" stage={self.stage}. Use stage=3, or offload_optimizer=True to offload optimizer states with stage 1"
                " or 2."
            )
        if self.offload_optimizer and self.stage == 0:
            raise ValueError("offload_optimizer=True needs a ZeRO stage of 1, 2 or 3, got stage=0.")
        if not isinstance(self.extra, Mapping):
            raise TypeError(f"extra must be a dict of DeepSpeed config entries, got {type(self.extra).__name__}")

    @property
    def uses_nvme(self) -> bool:
        """Whether something is offloaded to NVMe (which needs the asynchronous I/O settings)."""
        return (self.offload_optimizer and self.offload_optimizer_device == "nvme") or (
            self.offload_parameters and self.offload_params_device == "nvme"
        )

    def to_dict(self) -> dict[str, Any]:
        """DeepSpeed's config for these options (without the precision sections, which the precision plugin adds)."""
        zero: dict[str, Any] = {
            "stage": self.stage,
            "contiguous_gradients": self.contiguous_gradients,
            "overlap_comm": self.overlap_comm,
            "allgather_partitions": self.allgather_partitions,
            "reduce_scatter": self.reduce_scatter,
            "allgather_bucket_size": self.allgather_bucket_size,
            "reduce_bucket_size": self.reduce_bucket_size,
            "sub_group_size": self.sub_group_size,
        }
        if self.offload_optimizer:
            zero["offload_optimizer"] = {
                "device": self.offload_optimizer_device,
                "nvme_path": os.fspath(self.nvme_path),
                "buffer_count": self.optimizer_buffer_count,
                "pin_memory": self.pin_memory,
            }
        if self.offload_parameters:
            zero["offload_param"] = {
                "device": self.offload_params_device,
                "nvme_path": os.fspath(self.nvme_path),
                "buffer_count": self.params_buffer_count,
                "buffer_size": self.params_buffer_size,
                "max_in_cpu": self.max_in_cpu,
                "pin_memory": self.pin_memory,
            }
        config: dict[str, Any] = {
            "zero_optimization": zero,
            "zero_allow_untested_optimizer": self.zero_allow_untested_optimizer,
            "zero_force_ds_cpu_optimizer": self.force_ds_cpu_optimizer,
            "train_micro_batch_size_per_gpu": self.logging_batch_size_per_gpu,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": self.gradient_clipping,
            "activation_checkpointing": {
                "partition_activations": self.partition_activations,
                "cpu_checkpointing": self.cpu_checkpointing,
                "contiguous_memory_optimization": self.contiguous_memory_optimization,
                "synchronize_checkpoint_boundary": self.synchronize_checkpoint_boundary,
            },
        }
        if self.uses_nvme:
            config["aio"] = {
                "block_size": self.block_size,
                "queue_depth": self.queue_depth,
                "single_submit": self.single_submit,
                "overlap_events": self.overlap_events,
                "thread_count": self.thread_count,
            }
        return merge_config(config, self.extra)


def merge_config(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``; nested dicts are merged key by key. Neither input is modified."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_config(config: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """A raw DeepSpeed config: a dict (copied) or the path of a JSON file."""
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config))
    if not isinstance(config, (str, os.PathLike)):
        raise TypeError(
            f"config must be a DeepSpeedConfig, a dict or the path of a JSON file, got {type(config).__name__}"
        )
    path = Path(config)
    if not path.is_file():
        raise ValueError(f"The DeepSpeed config file {str(path)!r} does not exist (config expects a JSON file).")
    try:
        loaded = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"The DeepSpeed config file {str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(loaded, dict):
        raise ValueError(
            f"The DeepSpeed config file {str(path)!r} must hold a JSON object, got {type(loaded).__name__}"
        )
    return loaded


def complete_raw_config(config: dict[str, Any]) -> dict[str, Any]:
    """Fill what DeepSpeed insists on and fabric decides: a batch size (for its logging) unless one is given."""
    if not any(key in config for key in _BATCH_SIZE_KEYS):
        config["train_micro_batch_size_per_gpu"] = 1
    return config


def zero_stage_of(config: Mapping[str, Any]) -> int:
    """The ZeRO stage a DeepSpeed config asks for (0 when it has no ``zero_optimization`` section)."""
    zero = config.get("zero_optimization", {})
    if isinstance(zero, bool):  # DeepSpeed's older boolean form
        return 1 if zero else 0
    stage = zero.get("stage", 0) if isinstance(zero, Mapping) else 0
    _check_choice("ZeRO stage in the DeepSpeed config", stage, ZERO_STAGES)
    return int(stage)


def build_config(
    config: DeepSpeedConfig | Mapping[str, Any] | str | os.PathLike[str] | None, options: Mapping[str, Any]
) -> tuple[dict[str, Any], DeepSpeedConfig | None]:
    """The DeepSpeed config dict for the strategy's ``config`` argument and its keyword ``options``.

    ``options`` are ``DeepSpeedConfig`` fields given directly to the strategy (``DeepSpeedStrategy(stage=3)``).
    Returns the dict and the dataclass it came from (``None`` for a raw config).
    """
    check_passed_keywords(
        options, [f.name for f in fields(DeepSpeedConfig)], "DeepSpeedStrategy got unknown options {}."
    )
    if options and config is not None:
        raise ValueError(
            "Pass DeepSpeed options either as `config` or as keyword arguments, not both (got config and"
            f" {sorted(options)})."
        )
    if config is None:
        config = DeepSpeedConfig(**options)
    if isinstance(config, DeepSpeedConfig):
        return config.to_dict(), config
    return complete_raw_config(read_config(config)), None
