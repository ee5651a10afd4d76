"""``16-true`` and ``bf16-true``: HalfPrecision."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fabric_precision import HalfPrecision
from fabric_testing import RunIf

DTYPES = {"16-true": torch.float16, "bf16-true": torch.bfloat16}


@pytest.mark.parametrize("precision", ["16-true", "bf16-true"])
def test_half_precision_converts_everything(precision: str) -> None:
    plugin = HalfPrecision(precision)  # type: ignore[arg-type]
    dtype = DTYPES[precision]
    assert plugin.precision == precision
    assert plugin.dtype == dtype
    assert (plugin.needs_forward_context, plugin.needs_input_conversion, plugin.needs_output_conversion) == (
        True,
        True,
        True,
    )
    module = plugin.convert_module(nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8)))
    assert {p.dtype for p in module.parameters()} == {dtype}
    seen: list[torch.dtype] = []
    module.register_forward_hook(lambda mod, args, out: seen.extend([args[0].dtype, out.dtype]))
    batch = {"x": torch.randn(2, 4), "labels": torch.tensor([0, 1])}
    with plugin.forward_context():
        assert torch.get_default_dtype() == dtype
        converted = plugin.convert_input(batch)
        output = module(converted["x"])
        # the wrapper may convert the output inside the context: it still comes back as float32
        inside = plugin.convert_output(output)
    assert converted["labels"].dtype == torch.int64
    assert seen == [dtype, dtype]
    assert inside.dtype == torch.float32
    assert plugin.convert_output(output).dtype == torch.float32
    assert torch.get_default_dtype() == torch.float32


@pytest.mark.parametrize("precision", ["16-true", "bf16-true"])
def test_half_precision_init_contexts(precision: str) -> None:
    plugin = HalfPrecision(precision)  # type: ignore[arg-type]
    with plugin.module_init_context():
        layer = nn.Linear(2, 2)
    with plugin.tensor_init_context():
        tensor = torch.ones(2)
    assert layer.weight.dtype == DTYPES[precision]
    assert tensor.dtype == DTYPES[precision]
    assert torch.ones(1).dtype == torch.float32


def test_half_precision_default_and_bad_value() -> None:
    assert HalfPrecision().precision == "16-true"
    with pytest.raises(ValueError, match=r"Unknown half precision '16-mixed'\. Choose one of: 16-true, bf16-true"):
        HalfPrecision("16-mixed")  # type: ignore[arg-type]


@RunIf(min_cuda_gpus=1)
def test_half_precision_on_cuda_trains() -> None:
    plugin = HalfPrecision("bf16-true")
    module = plugin.convert_module(nn.Linear(16, 4)).cuda()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    before = module.weight.detach().clone()
    with plugin.forward_context():
        out = module(plugin.convert_input(torch.randn(8, 16, device="cuda")))
    out = plugin.convert_output(out)
    assert out.dtype == torch.float32
    plugin.backward(out.sum(), module)
    plugin.optimizer_step(optimizer)
    assert module.weight.dtype == torch.bfloat16
    assert not torch.equal(before, module.weight)
