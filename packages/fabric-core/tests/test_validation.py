"""Argument checks of ``Fabric``'s methods: wrong types and values raise, naming the value, before anything changes."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from fabric_core import Fabric
from fabric_core.validation import check_bool, check_clip_arguments, check_optional_bool


@pytest.mark.parametrize("value", ["yes", 1, 0, None, 1.0, [True]])
def test_check_bool_refuses_anything_but_a_bool(value: Any) -> None:
    with pytest.raises(TypeError) as info:
        check_bool("load", strict=value)
    message = str(info.value)
    assert f"fabric.load(strict={value!r})" in message
    assert "must be a bool (True or False)" in message
    assert type(value).__name__ in message


def test_check_bool_accepts_bools_and_the_optional_form_accepts_none() -> None:
    check_bool("setup_dataloaders", use_distributed_sampler=True, move_to_device=False)
    check_optional_bool("init_module", empty_init=None)
    check_optional_bool("init_module", empty_init=True)
    with pytest.raises(TypeError, match=r"fabric.init_module\(empty_init='yes'\) must be a bool or None"):
        check_optional_bool("init_module", empty_init="yes")
    with pytest.raises(TypeError, match=r"move_to_device=0\)"):  # the second flag is checked too
        check_bool("setup_dataloaders", use_distributed_sampler=True, move_to_device=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        ({}, ValueError, "clip_val=None and max_norm=None"),
        ({"clip_val": 1.0, "max_norm": 2.0}, ValueError, "clip_val=1.0 and max_norm=2.0"),
        ({"max_norm": -1.0}, ValueError, "max_norm=-1.0"),
        ({"max_norm": 0}, ValueError, "max_norm=0"),
        ({"max_norm": math.inf}, ValueError, "max_norm=inf"),
        ({"max_norm": math.nan}, ValueError, "max_norm=nan"),
        ({"max_norm": "1.0"}, TypeError, "max_norm='1.0'"),
        ({"max_norm": True}, TypeError, "max_norm=True"),
        ({"clip_val": -0.5}, ValueError, "clip_val=-0.5"),
        ({"clip_val": 0.0}, ValueError, "clip_val=0.0"),
        ({"clip_val": [1.0]}, TypeError, "clip_val=[1.0]"),
        ({"max_norm": 1.0, "norm_type": -2}, ValueError, "norm_type=-2"),
        ({"max_norm": 1.0, "error_if_nonfinite": "yes"}, TypeError, "error_if_nonfinite='yes'"),
    ],
)
def test_clip_arguments_name_the_bad_value(kwargs: dict[str, Any], error: type[Exception], named: str) -> None:
    arguments = {"clip_val": None, "max_norm": None, "norm_type": 2.0, "error_if_nonfinite": True, **kwargs}
    with pytest.raises(error) as info:
        check_clip_arguments(**arguments)
    assert named in str(info.value)


def test_clip_arguments_accept_one_positive_threshold() -> None:
    check_clip_arguments(None, 1, 2.0, True)
    check_clip_arguments(0.5, None, 2.0, False)
    check_clip_arguments(None, 1e-3, "inf", True)


class Trained:
    """A CPU Fabric with a set-up model whose gradients are known."""

    def __init__(self) -> None:
        self.fabric = Fabric(accelerator="cpu")
        model = nn.Linear(2, 1, bias=False)
        self.model, self.optimizer = self.fabric.setup(model, torch.optim.SGD(model.parameters(), lr=1.0))
        self.model.weight.grad = torch.tensor([[3.0, -4.0]])


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_norm": -1.0}, ValueError),
        ({"max_norm": 0.0}, ValueError),
        ({"clip_val": -2.0}, ValueError),
        ({"max_norm": 1.0, "norm_type": "fro"}, ValueError),
        ({"max_norm": 1.0, "error_if_nonfinite": 1}, TypeError),
    ],
)
def test_bad_clip_arguments_leave_the_gradients_untouched(kwargs: dict[str, Any], error: type[Exception]) -> None:
    trained = Trained()
    with pytest.raises(error):
        trained.fabric.clip_gradients(trained.model, trained.optimizer, **kwargs)
    assert trained.model.weight.grad.tolist() == [[3.0, -4.0]]
    # the same clipping with a valid threshold works
    norm = trained.fabric.clip_gradients(trained.model, trained.optimizer, max_norm=1.0, norm_type="inf")
    assert norm is not None
    assert float(norm) == pytest.approx(4.0)
    assert trained.model.weight.grad.abs().max().item() == pytest.approx(1.0, rel=1e-4)


BAD_FLAG_CALLS: list[tuple[str, Callable[[Fabric], Any], str]] = [
    ("setup", lambda f: f.setup(nn.Linear(1, 1), move_to_device="yes"), "move_to_device='yes'"),
    ("setup_module", lambda f: f.setup_module(nn.Linear(1, 1), move_to_device=None), "move_to_device=None"),
    (
        "setup_dataloaders sampler",
        lambda f: f.setup_dataloaders(DataLoader(range(4)), use_distributed_sampler="no"),
        "use_distributed_sampler='no'",
    ),
    (
        "setup_dataloaders move",
        lambda f: f.setup_dataloaders(DataLoader(range(4)), move_to_device=1),
        "move_to_device=1",
    ),
    ("init_module", lambda f: f.init_module(empty_init="yes"), "empty_init='yes'"),
    ("load strict", lambda f: f.load("unused.ckpt", strict="yes"), "strict='yes'"),
    ("load weights_only", lambda f: f.load("unused.ckpt", weights_only="no"), "weights_only='no'"),
    ("load_raw strict", lambda f: f.load_raw("unused.pt", nn.Linear(1, 1), strict=0), "strict=0"),
    ("all_gather", lambda f: f.all_gather(torch.ones(1), sync_grads="yes"), "sync_grads='yes'"),
    ("rank_zero_first", lambda f: f.rank_zero_first(local="yes"), "local='yes'"),
    ("seed_everything", lambda f: f.seed_everything(1, workers="yes"), "workers='yes'"),
]


@pytest.mark.parametrize(
    ("call", "named"), [pytest.param(call, named, id=name) for name, call, named in BAD_FLAG_CALLS]
)
def test_non_bool_flags_raise_a_type_error_naming_the_value(call: Callable[[Fabric], Any], named: str) -> None:
    fabric = Fabric(accelerator="cpu")
    with pytest.raises(TypeError) as info:
        call(fabric)  # raised at the call, before a context manager is entered or a file is read
    assert named in str(info.value)
    assert "must be a bool" in str(info.value)


def test_no_backward_sync_enabled_must_be_a_bool() -> None:
    trained = Trained()
    with pytest.raises(TypeError, match=r"no_backward_sync\(enabled='no'\) must be a bool"):
        trained.fabric.no_backward_sync(trained.model, enabled="no")  # type: ignore[arg-type]


def test_a_refused_setup_leaves_the_model_free_to_set_up() -> None:
    fabric = Fabric(accelerator="cpu")
    model = nn.Linear(1, 1)
    with pytest.raises(TypeError):
        fabric.setup(model, move_to_device="yes")  # type: ignore[arg-type]
    wrapped = fabric.setup(model)
    assert wrapped.module is model
