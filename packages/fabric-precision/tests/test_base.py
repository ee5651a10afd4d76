"""The ``Precision`` base (32-true) and the helpers of base.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fabric_precision import Precision
from fabric_precision.base import (
    PRECISION_DTYPES,
    check_choice,
    convert_floating_tensors,
    default_dtype,
    output_dtype,
    replace_submodule,
)


def test_base_is_32_true_and_needs_nothing_on_the_hot_path() -> None:
    plugin = Precision()
    assert plugin.precision == "32-true"
    assert not plugin.needs_forward_context
    assert not plugin.needs_input_conversion
    assert not plugin.needs_output_conversion
    assert repr(plugin) == "Precision(precision='32-true')"


def test_base_hooks_leave_module_and_data_alone() -> None:
    plugin = Precision()
    module = nn.Linear(3, 2)
    assert plugin.convert_module(module) is module
    assert module.weight.dtype == torch.float32
    data = {"x": torch.randn(2, 3, dtype=torch.float64), "n": 3}
    assert plugin.convert_input(data) is data
    assert plugin.convert_output(data) is data
    with plugin.tensor_init_context(), plugin.module_init_context(), plugin.forward_context():
        assert torch.get_default_dtype() == torch.float32
        assert not torch.is_autocast_enabled("cpu")
    assert plugin.state_dict() == {}


def test_base_backward_and_step_train_the_module() -> None:
    torch.manual_seed(0)
    plugin = Precision()
    module = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    before = module.weight.detach().clone()
    loss = module(torch.randn(4, 3)).pow(2).sum()
    loss = plugin.pre_backward(loss, module)
    plugin.backward(loss, module)
    plugin.post_backward(loss, module)
    plugin.unscale_gradients(optimizer)
    assert module.weight.grad is not None
    plugin.optimizer_step(optimizer)
    assert not torch.equal(before, module.weight)
    assert [p for p in plugin.main_params(optimizer)] == list(module.parameters())


def test_convert_floating_tensors_touches_only_floating_tensors() -> None:
    data = {
        "x": torch.randn(2),
        "nested": [torch.randn(2, dtype=torch.float64), (torch.arange(3), "text")],
        "flag": torch.tensor([True]),
    }
    converted = convert_floating_tensors(data, torch.bfloat16)
    assert converted["x"].dtype == torch.bfloat16
    assert converted["nested"][0].dtype == torch.bfloat16
    assert converted["nested"][1][0].dtype == torch.int64
    assert converted["nested"][1][1] == "text"
    assert converted["flag"].dtype == torch.bool
    same = torch.randn(2, dtype=torch.bfloat16)
    assert convert_floating_tensors(same, torch.bfloat16) is same


def test_default_dtype_restores_on_error_and_output_dtype_sees_outside() -> None:
    assert output_dtype() == torch.float32

    def fail_inside() -> None:
        with default_dtype(torch.float64):
            assert torch.get_default_dtype() == torch.float64
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert torch.get_default_dtype() == torch.float32
    with default_dtype(torch.float16):
        with default_dtype(torch.float64):
            assert torch.get_default_dtype() == torch.float64
            assert output_dtype() == torch.float32
        assert torch.get_default_dtype() == torch.float16
    assert torch.get_default_dtype() == torch.float32


def test_check_choice_names_the_value_and_the_choices() -> None:
    check_choice("colour", "red", ("red", "green"))
    with pytest.raises(ValueError, match=r"Unknown colour 'blue'\. Choose one of: red, green"):
        check_choice("colour", "blue", ("red", "green"))
    with pytest.raises(ValueError, match="Unknown colour 3"):
        check_choice("colour", 3, ("red", "green"))


def test_precision_dtypes_cover_the_builtin_names() -> None:
    assert PRECISION_DTYPES["bf16-mixed"] is torch.bfloat16
    assert PRECISION_DTYPES["16-true"] is torch.float16
    assert PRECISION_DTYPES["64-true"] is torch.float64


def test_replace_submodule_nested_and_top_level() -> None:
    root = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 2)))
    replace_submodule(root, "1.1", nn.Identity())
    replace_submodule(root, "0", nn.Tanh())
    assert isinstance(root[1][1], nn.Identity)
    assert isinstance(root[0], nn.Tanh)
