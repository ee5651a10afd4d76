"""``64-true``: DoublePrecision."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fabric_precision import DoublePrecision, Precision


def wrapped_forward(plugin: Precision, module: nn.Module, *args: Any) -> Any:
    """What fabric-core's module wrapper does around a forward."""
    with plugin.forward_context():
        return plugin.convert_output(module(*plugin.convert_input(args)))


class Probe(nn.Module):
    """Records the dtypes seen inside the forward."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.norm = nn.BatchNorm1d(2)
        self.seen: dict[str, torch.dtype] = {}

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen = {"input": x.dtype, "index": index.dtype, "new_tensor": torch.zeros(1).dtype}
        return {"out": self.norm(self.linear(x)), "index": index}


def test_double_precision_converts_module_inputs_and_outputs() -> None:
    plugin = DoublePrecision()
    assert plugin.precision == "64-true"
    assert plugin.dtype == torch.float64
    assert (plugin.needs_forward_context, plugin.needs_input_conversion, plugin.needs_output_conversion) == (
        True,
        True,
        True,
    )
    module = plugin.convert_module(Probe())
    assert {p.dtype for p in module.parameters()} == {torch.float64}
    assert module.norm.running_mean.dtype == torch.float64
    assert module.norm.num_batches_tracked.dtype == torch.int64
    output = wrapped_forward(plugin, module, torch.randn(3, 4), torch.arange(3))
    assert module.seen == {"input": torch.float64, "index": torch.int64, "new_tensor": torch.float64}
    assert output["out"].dtype == torch.float32
    assert output["index"].dtype == torch.int64
    assert torch.get_default_dtype() == torch.float32


def test_double_precision_init_contexts() -> None:
    plugin = DoublePrecision()
    with plugin.module_init_context():
        layer = nn.Linear(2, 2)
    with plugin.tensor_init_context():
        tensor = torch.empty(2)
    assert layer.weight.dtype == torch.float64
    assert tensor.dtype == torch.float64
    assert torch.empty(1).dtype == torch.float32


def test_double_precision_gradients_are_float64() -> None:
    plugin = DoublePrecision()
    module = plugin.convert_module(nn.Linear(3, 1))
    loss = wrapped_forward(plugin, module, torch.randn(5, 3)).sum()
    plugin.backward(plugin.pre_backward(loss, module), module)
    assert module.weight.grad is not None
    assert module.weight.grad.dtype == torch.float64
