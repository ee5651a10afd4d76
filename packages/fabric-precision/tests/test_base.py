"""The ``Precision`` base (32-true) and the helpers of base.py."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any, NamedTuple

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
from fabric_utils import apply_to_collection


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


class _Pair(NamedTuple):
    a: Any
    b: Any


@dataclasses.dataclass
class _Box:
    value: Any
    label: str = "box"


def _reference_convert(data: Any, dtype: torch.dtype) -> Any:
    """What ``convert_floating_tensors`` did before its fast path: the general ``apply_to_collection`` walk."""

    def convert(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(dtype) if torch.is_floating_point(tensor) and tensor.dtype != dtype else tensor

    return apply_to_collection(data, torch.Tensor, convert)


def _assert_same_result(actual: Any, expected: Any, original: Any) -> None:
    """Same types at every level, equal tensors (dtype included), and untouched tensors are the input's objects."""
    assert type(actual) is type(expected)
    if isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype
        assert torch.equal(actual, expected)
        assert actual.requires_grad == expected.requires_grad
        assert (actual is original) == (expected is original)
    elif isinstance(expected, dict):
        assert list(actual) == list(expected)
        for key in expected:
            _assert_same_result(actual[key], expected[key], original[key])
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected)
        for a, e, o in zip(actual, expected, original):
            _assert_same_result(a, e, o)
    elif isinstance(expected, _Box):
        assert actual is not original
        _assert_same_result(actual.value, expected.value, original.value)
    else:
        assert actual == expected


_CASES = {
    "float32 tensor": lambda: torch.randn(3),
    "float64 tensor": lambda: torch.randn(3, dtype=torch.float64),
    "bfloat16 tensor": lambda: torch.randn(3).bfloat16(),
    "int tensor": lambda: torch.arange(3),
    "parameter": lambda: nn.Parameter(torch.randn(2)),
    "forward args": lambda: ((torch.randn(2), torch.arange(2)), {"mask": torch.randn(2, dtype=torch.float64)}),
    "empty args": lambda: ((), {}),
    "list": lambda: [torch.randn(2).half(), None, 3, 2.5, "s", b"b", 1j, True],
    "nested": lambda: {"a": [(torch.randn(2, dtype=torch.float64),)], "b": {"c": torch.randn(1)}},
    "namedtuple": lambda: _Pair(torch.randn(2).bfloat16(), [torch.randn(1)]),
    "ordered dict": lambda: OrderedDict(x=torch.randn(2).half(), y=1),
    "dataclass": lambda: _Box(torch.randn(2).half()),
    "set": lambda: {1, 2},
    "tuple inside a dataclass inside a tuple": lambda: (_Box((torch.randn(1).half(), 1)),),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("case", list(_CASES))
def test_convert_floating_tensors_matches_the_general_walk(case: str, dtype: torch.dtype) -> None:
    data = _CASES[case]()
    _assert_same_result(convert_floating_tensors(data, dtype), _reference_convert(data, dtype), data)


def test_convert_floating_tensors_keeps_the_autograd_graph() -> None:
    weight = torch.randn(3, requires_grad=True)
    ((converted,), _) = convert_floating_tensors((((weight * 2).bfloat16(),), {}), torch.float32)
    assert converted.dtype == torch.float32
    converted.sum().backward()
    assert torch.equal(weight.grad, torch.full((3,), 2.0))
