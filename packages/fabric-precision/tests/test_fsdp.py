"""FSDPPrecision: the FSDP2 policy, the hooks, and a real ``fully_shard`` run on two gloo processes."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

from fabric_precision import FSDPPrecision
from fabric_testing import RunIf, run_processes

ALL = ["32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed"]


@pytest.mark.parametrize(
    ("precision", "param_dtype", "reduce_dtype"),
    [
        ("32-true", None, None),
        ("16-true", torch.float16, torch.float16),
        ("bf16-true", torch.bfloat16, torch.bfloat16),
        ("16-mixed", torch.float16, torch.float32),
        ("bf16-mixed", torch.bfloat16, torch.float32),
    ],
)
def test_mixed_precision_policy(precision: str, param_dtype: Any, reduce_dtype: Any) -> None:
    policy = FSDPPrecision(precision).mixed_precision_policy()  # type: ignore[arg-type]
    assert isinstance(policy, MixedPrecisionPolicy)
    assert policy.param_dtype == param_dtype
    assert policy.reduce_dtype == reduce_dtype
    assert policy.output_dtype is None
    assert policy.cast_forward_inputs


def test_32_true_needs_nothing_on_the_hot_path() -> None:
    plugin = FSDPPrecision("32-true")
    assert plugin.precision == "32-true"
    assert not plugin.needs_forward_context
    assert not plugin.needs_input_conversion
    assert not plugin.needs_output_conversion
    assert plugin.scaler is None
    module = nn.Linear(2, 2)
    assert plugin.convert_module(module) is module
    assert plugin.state_dict() == {}


@pytest.mark.parametrize("precision", ALL[1:])
def test_other_precisions_need_the_hooks(precision: str) -> None:
    plugin = FSDPPrecision(precision)  # type: ignore[arg-type]
    assert (plugin.needs_forward_context, plugin.needs_input_conversion, plugin.needs_output_conversion) == (
        True,
        True,
        True,
    )


@pytest.mark.parametrize(("precision", "dtype"), [("16-true", torch.float16), ("bf16-true", torch.bfloat16)])
def test_true_half_converts_before_sharding(precision: str, dtype: torch.dtype) -> None:
    plugin = FSDPPrecision(precision)  # type: ignore[arg-type]
    module = plugin.convert_module(nn.Linear(2, 2))
    assert module.weight.dtype == dtype
    with plugin.module_init_context():
        assert nn.Linear(2, 2).weight.dtype == dtype
    with plugin.forward_context():
        assert torch.get_default_dtype() == dtype
        assert not torch.is_autocast_enabled("cpu")
    assert plugin.convert_input(torch.ones(1)).dtype == dtype
    assert plugin.convert_output(torch.ones(1, dtype=dtype)).dtype == torch.float32


@pytest.mark.parametrize(("precision", "dtype"), [("16-mixed", torch.float16), ("bf16-mixed", torch.bfloat16)])
def test_mixed_keeps_float32_weights_and_autocasts(precision: str, dtype: torch.dtype) -> None:
    plugin = FSDPPrecision(precision, device_type="cpu")  # type: ignore[arg-type]
    module = plugin.convert_module(nn.Linear(2, 2))
    assert module.weight.dtype == torch.float32
    with plugin.module_init_context():
        assert torch.get_default_dtype() == torch.float32
    with plugin.forward_context():
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == dtype
    assert plugin.convert_input(torch.ones(1, dtype=torch.float64)).dtype == torch.float32
    assert isinstance(plugin.scaler, ShardedGradScaler) == (precision == "16-mixed")


def test_fsdp_precision_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match=r"Unknown FSDP precision '64-true'\. Choose one of: 32-true, 16-true"):
        FSDPPrecision("64-true")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Unknown device type 'gpu'"):
        FSDPPrecision("bf16-mixed", device_type="gpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="takes no gradient scaler"):
        FSDPPrecision("bf16-mixed", scaler=ShardedGradScaler(device="cpu"))
    scaler = ShardedGradScaler(device="cpu", init_scale=4.0)
    assert FSDPPrecision("16-mixed", scaler=scaler).scaler is scaler


def _shard_and_step_each(rank: int, world_size: int, precisions: list[str]) -> dict[str, dict[str, Any]]:
    return {precision: _shard_and_step(rank, precision) for precision in precisions}


def _shard_and_step(rank: int, precision: str) -> dict[str, Any]:
    """Shard a small model with the plugin's policy, take one step with an inf gradient on rank 0 only, then one
    finite step; report what each rank saw."""
    from torch.distributed.fsdp import fully_shard

    plugin = FSDPPrecision(precision, device_type="cpu")  # type: ignore[arg-type]
    torch.manual_seed(0)
    model = plugin.convert_module(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)))
    seen: list[tuple[torch.dtype, torch.dtype]] = []
    model[0].register_forward_hook(lambda mod, args, out: seen.append((mod.weight.dtype, out.dtype)))
    fully_shard(model, mp_policy=plugin.mixed_precision_policy())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(poison: bool) -> bool:
        optimizer.zero_grad()
        with plugin.forward_context():
            out = model(plugin.convert_input(torch.randn(4, 8)))
        loss = plugin.convert_output(out).pow(2).mean()
        plugin.backward(plugin.pre_backward(loss, model), model)
        if poison and rank == 0:
            next(iter(model.parameters())).grad.to_local().view(-1)[0] = float("inf")
        before = [p.detach().full_tensor().clone() for p in model.parameters()]
        plugin.optimizer_step(optimizer)
        return all(torch.equal(a, p.detach().full_tensor()) for a, p in zip(before, model.parameters()))

    skipped_with_inf = step(poison=plugin.scaler is not None)
    skipped_finite = step(poison=False)
    return {
        "compute": [(str(w), str(o)) for w, o in seen[:1]],
        "sharded_param_dtype": str(next(iter(model.parameters())).dtype),
        "grad_dtype": str(next(iter(model.parameters())).grad.dtype),
        "skipped_with_inf": skipped_with_inf,
        "skipped_finite": skipped_finite,
        "scaler_state": plugin.state_dict(),
    }


@RunIf(skip_windows=True)
def test_real_fully_shard_on_two_processes() -> None:
    per_rank = run_processes(_shard_and_step_each, ["16-mixed", "bf16-true"], world_size=2)
    results = {precision: [per_rank[0][precision], per_rank[1][precision]] for precision in per_rank[0]}
    mixed = results["16-mixed"]
    for rank_result in mixed:
        assert rank_result["compute"] == [("torch.float16", "torch.float16")]
        assert rank_result["sharded_param_dtype"] == "torch.float32"  # the optimizer updates float32 shards
        assert rank_result["grad_dtype"] == "torch.float32"  # reduced in float32
        assert rank_result["skipped_with_inf"] is True  # every rank skipped although only rank 0 saw inf
        assert rank_result["skipped_finite"] is False
    assert mixed[0]["scaler_state"] == mixed[1]["scaler_state"]
    assert mixed[0]["scaler_state"]["scale"] == 2.0**15
    for rank_result in results["bf16-true"]:
        assert rank_result["compute"] == [("torch.bfloat16", "torch.bfloat16")]
        assert rank_result["sharded_param_dtype"] == "torch.bfloat16"
        assert rank_result["grad_dtype"] == "torch.bfloat16"
        assert rank_result["skipped_finite"] is False
        assert rank_result["scaler_state"] == {}
