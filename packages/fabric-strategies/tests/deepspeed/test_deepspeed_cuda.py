"""DeepSpeedStrategy on CUDA (run by the ``tests_cuda`` session): fp16 with nccl, and CPU runs on a GPU machine."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch

from fabric_environments import LightningEnvironment
from fabric_precision import DeepSpeedPrecision
from fabric_strategies import DeepSpeedStrategy
from fabric_testing import RunIf, TinyMLP, run_processes


def _strategy(devices: list[torch.device], precision: str, **options: Any) -> DeepSpeedStrategy:
    strategy = DeepSpeedStrategy(
        parallel_devices=devices,
        cluster_environment=LightningEnvironment(),
        precision=DeepSpeedPrecision(precision),  # type: ignore[arg-type]
        timeout=timedelta(seconds=60),
        **options,
    )
    strategy.setup_environment()
    return strategy


def _fp16_on_gpus(rank: int, world_size: int) -> dict[str, Any]:
    strategy = _strategy([torch.device("cuda", i) for i in range(world_size)], "16-mixed", stage=2)
    torch.manual_seed(0)
    model = TinyMLP(8, 16, 4)
    strategy.module_to_device(model)
    engine, [optimizer] = strategy.setup_module_and_optimizers(model, [torch.optim.AdamW(model.parameters(), lr=1e-2)])
    for _ in range(3):
        x = strategy.precision.convert_input(torch.randn(4, 8, device=strategy.root_device))
        strategy.backward(engine(x).float().pow(2).mean(), engine)
        strategy.optimizer_step(optimizer)
    state = {k: v.float().cpu().tolist() for k, v in strategy.get_module_state_dict(engine).items()}
    result = {"dtype": str(next(engine.module.parameters()).dtype), "device": str(engine.device), "state": state}
    strategy.teardown()
    return result


@RunIf(min_cuda_gpus=2, deepspeed=True)
def test_fp16_zero2_on_two_gpus_over_nccl() -> None:
    first, second = run_processes(_fp16_on_gpus, world_size=2, backend="nccl")
    assert first["dtype"] == "torch.float16"
    assert (first["device"], second["device"]) == ("cuda:0", "cuda:1")
    assert first["state"] == second["state"]


def _cpu_on_a_gpu_machine(rank: int, world_size: int) -> dict[str, Any]:
    from deepspeed.accelerator import get_accelerator

    before = get_accelerator().device_name()
    strategy = _strategy([torch.device("cpu")], "bf16-mixed", stage=2)
    after = get_accelerator().device_name()
    model = TinyMLP(8, 16, 4)
    engine, [optimizer] = strategy.setup_module_and_optimizers(model, [torch.optim.SGD(model.parameters(), lr=0.1)])
    strategy.backward(engine(torch.randn(2, 8).bfloat16()).float().sum(), engine)
    strategy.optimizer_step(optimizer)
    device = next(engine.module.parameters()).device.type
    strategy.teardown()
    return {"before": before, "after": after, "device": device}


@RunIf(min_cuda_gpus=1, deepspeed=True)
def test_a_cpu_run_on_a_gpu_machine_moves_deepspeed_to_the_cpu() -> None:
    (result,) = run_processes(_cpu_on_a_gpu_machine, world_size=1)
    assert result == {"before": "cuda", "after": "cpu", "device": "cpu"}
