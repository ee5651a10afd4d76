import dataclasses
import enum
from argparse import Namespace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fabric_loggers._convert import (
    add_prefix,
    check_step,
    convert_params,
    flatten_params,
    metric_scalar,
    tensorboard_value,
    yaml_value,
)


class Color(enum.Enum):
    RED = 1


@dataclasses.dataclass
class Config:
    depth: int
    path: Path


def test_add_prefix():
    assert add_prefix({"loss": 1}, "", "-") == {"loss": 1}
    assert add_prefix({"loss": 1, "acc": 2}, "train", "-") == {"train-loss": 1, "train-acc": 2}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, 3),
        (0.5, 0.5),
        (True, 1),
        (torch.tensor(2.5), 2.5),
        (torch.tensor([7]), 7),
        (np.float32(0.25), 0.25),
        (np.array([[4.0]]), 4.0),
        (Fraction(1, 4), 0.25),
    ],
)
def test_metric_scalar_accepts_numbers_and_one_element_tensors(value, expected):
    result = metric_scalar("m", value)
    assert result == expected
    assert type(result) in (int, float)


def test_metric_scalar_names_the_metric_in_errors():
    with pytest.raises(ValueError, match=r"'loss'.*shape \(2,\)"):
        metric_scalar("loss", torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"'acc'.*3 elements"):
        metric_scalar("acc", np.zeros(3))
    with pytest.raises(TypeError, match=r"'name'.*'abc'.*str"):
        metric_scalar("name", "abc")
    with pytest.raises(TypeError, match=r"'c'.*complex"):
        metric_scalar("c", 1 + 2j)


def test_check_step():
    assert check_step(None) is None
    assert check_step(4) == 4
    assert check_step(np.int64(5)) == 5
    assert check_step(torch.tensor(6)) == 6
    with pytest.raises(TypeError, match=r"step must be an int or None, got float: 1\.5"):
        check_step(1.5)


def test_convert_params():
    assert convert_params(None) == {}
    assert convert_params(Namespace(lr=0.1, depth=2)) == {"lr": 0.1, "depth": 2}
    original = {"a": 1}
    converted = convert_params(original)
    assert converted == original
    assert converted is not original
    with pytest.raises(TypeError, match=r"dict or an argparse.Namespace, got list"):
        convert_params([1, 2])  # type: ignore[arg-type]


def test_flatten_params():
    params = {"optim": {"lr": 0.1, "betas": {"b1": 0.9}}, "data": Namespace(batch=8), "empty": {}, "x": 1}
    assert flatten_params(params) == {"optim/lr": 0.1, "optim/betas/b1": 0.9, "data/batch": 8, "empty": {}, "x": 1}
    assert flatten_params({"a": {"b": 1}}, separator=".") == {"a.b": 1}


def test_yaml_value_gives_what_safe_dump_writes_and_reads_back():
    params = {
        "lr": np.float64(0.1),
        "steps": np.int64(5),
        "tensor": torch.tensor([1.0, 2.0]),
        "scalar_tensor": torch.tensor(3),
        "path": Path("/data"),
        "color": Color.RED,
        "optimizer": torch.optim.SGD,
        "tags": ("a", "b"),
        "ids": {3, 1},
        "ns": Namespace(depth=2),
        "config": Config(depth=4, path=Path("x")),
        "none": None,
        "obj": object,
    }
    loaded = yaml.safe_load(yaml.safe_dump(yaml_value(params)))
    assert loaded == {
        "lr": 0.1,
        "steps": 5,
        "tensor": [1.0, 2.0],
        "scalar_tensor": 3,
        "path": "/data",
        "color": "RED",
        "optimizer": "torch.optim.sgd.SGD",
        "tags": ["a", "b"],
        "ids": [1, 3],
        "ns": {"depth": 2},
        "config": {"depth": 4, "path": "x"},
        "none": None,
        "obj": "object",
    }


def test_tensorboard_value_is_a_bool_number_or_text():
    assert tensorboard_value(True) is True
    assert tensorboard_value(3) == 3
    assert tensorboard_value(np.float32(0.5)) == 0.5
    assert tensorboard_value("adam") == "adam"
    assert tensorboard_value(None) == "None"
    assert tensorboard_value([1, 2]) == "[1, 2]"
    assert tensorboard_value(torch.tensor(4.0)) == 4.0
    assert tensorboard_value(Color.RED) == "RED"
