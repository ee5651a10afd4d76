"""DeepSpeedConfig: the keyword-only options and the DeepSpeed config they become."""

from __future__ import annotations

import dataclasses

import pytest

from fabric_strategies import DeepSpeedConfig


def test_defaults_become_a_zero_stage_2_config() -> None:
    config = DeepSpeedConfig().to_dict()
    assert config["zero_optimization"] == {
        "stage": 2,
        "contiguous_gradients": True,
        "overlap_comm": True,
        "allgather_partitions": True,
        "reduce_scatter": True,
        "allgather_bucket_size": 200_000_000,
        "reduce_bucket_size": 200_000_000,
        "sub_group_size": 1_000_000_000_000,
    }
    assert config["train_micro_batch_size_per_gpu"] == 1
    assert config["gradient_accumulation_steps"] == 1, "fabric drives accumulation, DeepSpeed steps every time"
    assert config["zero_force_ds_cpu_optimizer"] is False, "torch optimizers may step offloaded states"
    assert "aio" not in config
    assert "fp16" not in config
    assert "bf16" not in config, "the precision plugin adds the precision section"


def test_offload_sections() -> None:
    cpu = DeepSpeedConfig(stage=3, offload_optimizer=True, offload_parameters=True, pin_memory=True).to_dict()
    zero = cpu["zero_optimization"]
    assert zero["offload_optimizer"] == {
        "device": "cpu",
        "nvme_path": "/local_nvme",
        "buffer_count": 4,
        "pin_memory": True,
    }
    assert zero["offload_param"]["device"] == "cpu"
    assert zero["offload_param"]["max_in_cpu"] == 1_000_000_000
    nvme = DeepSpeedConfig(
        stage=3,
        offload_optimizer=True,
        offload_optimizer_device="nvme",
        nvme_path="/scratch",
        queue_depth=4,
    ).to_dict()
    assert nvme["zero_optimization"]["offload_optimizer"]["nvme_path"] == "/scratch"
    assert nvme["aio"]["queue_depth"] == 4, "NVMe offload brings the asynchronous I/O settings"


def test_activation_checkpointing_clipping_and_extra_entries() -> None:
    config = DeepSpeedConfig(
        partition_activations=True,
        gradient_clipping=1.5,
        logging_batch_size_per_gpu=8,
        extra={"zero_optimization": {"round_robin_gradients": True}, "wall_clock_breakdown": True},
    ).to_dict()
    assert config["activation_checkpointing"]["partition_activations"] is True
    assert config["gradient_clipping"] == 1.5
    assert config["train_micro_batch_size_per_gpu"] == 8
    assert config["zero_optimization"]["round_robin_gradients"] is True
    assert config["zero_optimization"]["stage"] == 2, "extra entries merge into the sections key by key"
    assert config["wall_clock_breakdown"] is True


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"stage": 4}, ValueError, r"Unknown ZeRO stage 4\. Choose one of: 0, 1, 2, 3"),
        ({"offload_parameters": True}, ValueError, "offload_parameters=True needs ZeRO stage 3"),
        ({"stage": 0, "offload_optimizer": True}, ValueError, "needs a ZeRO stage of 1, 2 or 3"),
        (
            {"offload_optimizer_device": "disk"},
            ValueError,
            "Unknown offload_optimizer_device 'disk'. Choose one of: cpu, nvme",
        ),
        ({"remote_device": "gpu"}, ValueError, "Unknown remote_device 'gpu'"),
        ({"reduce_bucket_size": 0}, ValueError, "reduce_bucket_size must be a number >= 1, got 0"),
        ({"gradient_clipping": -1.0}, ValueError, r"gradient_clipping must be a number >= 0, got -1\.0"),
        ({"overlap_comm": "yes"}, TypeError, "overlap_comm must be True or False, got 'yes'"),
        ({"extra": [1]}, TypeError, "extra must be a dict"),
        ({"nvme_path": 3}, TypeError, "nvme_path must be a path, got 3"),
    ],
)
def test_bad_options_are_named(options: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        DeepSpeedConfig(**options)  # type: ignore[arg-type]


def test_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        DeepSpeedConfig(3)  # type: ignore[misc]
    config = DeepSpeedConfig(stage=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.stage = 2  # type: ignore[misc]
    assert dataclasses.replace(config, stage=3).to_dict()["zero_optimization"]["stage"] == 3


def test_exports_and_registry_names_without_importing_deepspeed_or_torch_xla() -> None:
    import subprocess
    import sys

    code = (
        "import sys, fabric_strategies as s\n"
        "names = ['DeepSpeedConfig', 'DeepSpeedStrategy', 'XLAStrategy', 'XLAFSDPStrategy', 'SingleDeviceXLAStrategy',"
        " 'XLALauncher']\n"
        "assert set(names) <= set(s.__all__), names\n"
        "registered = [n for n in s.STRATEGY_REGISTRY if n.startswith('deepspeed') or 'xla' in n]\n"
        "print(','.join(registered))\n"
        "print('deepspeed' in sys.modules, 'torch_xla' in sys.modules)\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert output[0].split(",") == [
        "deepspeed",
        "deepspeed_stage_1",
        "deepspeed_stage_1_offload",
        "deepspeed_stage_2",
        "deepspeed_stage_2_offload",
        "deepspeed_stage_3",
        "deepspeed_stage_3_offload",
        "deepspeed_stage_3_offload_nvme",
        "single_xla",
        "xla",
        "xla_fsdp",
    ]
    assert output[1:] == ["False", "False"], "imported lazily, when a strategy runs"
