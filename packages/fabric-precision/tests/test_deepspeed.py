"""DeepSpeedPrecision: the config fragment, the hooks, and backward/step through a real DeepSpeed engine."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from fabric_precision import DeepSpeedLossScaling, DeepSpeedPrecision
from fabric_testing import RunIf, run_processes


def test_config_fragments() -> None:
    assert DeepSpeedPrecision("32-true").deepspeed_config() == {}
    assert DeepSpeedPrecision("bf16-mixed").deepspeed_config() == {"bf16": {"enabled": True}}
    assert DeepSpeedPrecision("bf16-true").deepspeed_config() == {"bf16": {"enabled": True}}
    fp16 = {
        "fp16": {
            "enabled": True,
            "loss_scale": 0.0,
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1.0,
        }
    }
    assert DeepSpeedPrecision("16-mixed").deepspeed_config() == fp16
    assert DeepSpeedPrecision("16-true").deepspeed_config() == fp16
    custom = DeepSpeedPrecision("16-mixed", loss_scaling=DeepSpeedLossScaling(loss_scale=128.0, hysteresis=4))
    assert custom.deepspeed_config()["fp16"]["loss_scale"] == 128.0
    assert custom.deepspeed_config()["fp16"]["hysteresis"] == 4


def test_loss_scaling_is_keyword_only_and_fp16_only() -> None:
    with pytest.raises(TypeError):
        DeepSpeedLossScaling(0.0)  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"loss_scaling applies to float16 only, but precision='bf16-mixed'"):
        DeepSpeedPrecision("bf16-mixed", loss_scaling=DeepSpeedLossScaling())


@pytest.mark.parametrize(
    ("precision", "dtype", "forward", "convert"),
    [
        ("32-true", torch.float32, False, False),
        ("16-mixed", torch.float16, False, True),
        ("bf16-mixed", torch.bfloat16, False, True),
        ("16-true", torch.float16, True, True),
        ("bf16-true", torch.bfloat16, True, True),
    ],
)
def test_hooks_per_precision(precision: str, dtype: torch.dtype, forward: bool, convert: bool) -> None:
    plugin = DeepSpeedPrecision(precision)  # type: ignore[arg-type]
    assert plugin.precision == precision
    assert plugin.dtype == dtype
    assert plugin.needs_forward_context is forward
    assert plugin.needs_input_conversion is convert
    assert plugin.needs_output_conversion is convert
    assert plugin.convert_input({"x": torch.ones(1), "i": torch.ones(1, dtype=torch.int32)})["x"].dtype == dtype
    assert plugin.convert_output(torch.ones(1, dtype=dtype)).dtype == torch.float32
    module = plugin.convert_module(nn.Linear(2, 2))
    # the engine casts the module for the mixed modes; "true" modes are converted here, before the engine exists
    assert module.weight.dtype == (dtype if precision.endswith("-true") else torch.float32)
    with plugin.module_init_context(), plugin.forward_context():
        assert torch.get_default_dtype() == (dtype if precision.endswith("-true") else torch.float32)


def test_backward_needs_the_engine() -> None:
    plugin = DeepSpeedPrecision("bf16-mixed")
    loss = nn.Linear(2, 1)(torch.ones(1, 2)).sum()
    with pytest.raises(TypeError, match="needs the DeepSpeed engine as `model`"):
        plugin.backward(loss, None)
    with pytest.raises(TypeError, match="needs the DeepSpeed engine"):
        plugin.backward(loss, nn.Linear(2, 1))


def test_bad_precision() -> None:
    with pytest.raises(ValueError, match=r"Unknown DeepSpeed precision '64-true'\. Choose one of: 32-true"):
        DeepSpeedPrecision("64-true")  # type: ignore[arg-type]


def _skip_the_cpu_comm_kernel() -> None:
    """What DeepSpeedStrategy does on the CPU (fabric_strategies.deepspeed.runtime.skip_cpu_comm_op, which this
    package's tests cannot import): mark DeepSpeed's shared-memory all-reduce kernel as not buildable, so that its
    communication backend falls back to the process group instead of compiling the kernel (about 50 s of CPU)."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().get_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def _train_with_engine(rank: int, world_size: int, precision: str) -> dict[str, Any]:
    import deepspeed

    _skip_the_cpu_comm_kernel()
    plugin = DeepSpeedPrecision(precision)  # type: ignore[arg-type]
    torch.manual_seed(0)
    model = plugin.convert_module(nn.Linear(8, 2))
    config = {"train_micro_batch_size_per_gpu": 4, "optimizer": {"type": "SGD", "params": {"lr": 0.1}}}
    config.update(plugin.deepspeed_config())
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    before = engine.module.weight.detach().float().clone()
    with plugin.forward_context():
        out = engine(plugin.convert_input(torch.randn(4, 8).to(engine.device)))
    loss = plugin.convert_output(out).pow(2).mean()
    loss = plugin.pre_backward(loss, engine)
    plugin.backward(loss, engine)
    plugin.post_backward(loss, engine)
    plugin.optimizer_step(engine)  # the engine is what a DeepSpeed strategy steps
    return {
        "weight_dtype": str(engine.module.weight.dtype),
        "output_dtype": str(out.dtype),
        "loss_dtype": str(loss.dtype),
        "changed": not torch.equal(before, engine.module.weight.detach().float()),
    }


@RunIf(deepspeed=True, skip_windows=True)
def test_backward_and_step_go_through_a_real_engine() -> None:
    (result,) = run_processes(_train_with_engine, "bf16-mixed", world_size=1, timeout=300)
    assert result == {
        "weight_dtype": "torch.bfloat16",
        "output_dtype": "torch.bfloat16",
        "loss_dtype": "torch.float32",
        "changed": True,
    }
