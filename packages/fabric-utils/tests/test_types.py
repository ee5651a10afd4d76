from __future__ import annotations

from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

import pytest
import torch
import torch.distributed as dist

from fabric_utils import (
    REDUCE_OP_NAMES,
    Logger,
    Optimizable,
    PathLike,
    ReduceOpName,
    Stateful,
    Steppable,
    check_num_nodes,
    check_reduce_op,
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("mean", "mean"),
        ("avg", "mean"),
        ("AVG", "mean"),
        ("Sum", "sum"),
        ("min", "min"),
        ("MAX", "max"),
        ("product", "product"),
        (dist.ReduceOp.SUM, "sum"),
        (dist.ReduceOp.AVG, "mean"),
        (dist.ReduceOp.MIN, "min"),
        (dist.ReduceOp.MAX, "max"),
        (dist.ReduceOp.PRODUCT, "product"),
        (dist.ReduceOp(dist.ReduceOp.MAX), "max"),
        (dist.ReduceOp.BAND, "band"),
        (dist.ReduceOp.BXOR, "bxor"),
    ],
)
def test_check_reduce_op_normalises(given: object, expected: str) -> None:
    assert check_reduce_op(given) == expected


@pytest.mark.parametrize("bad", ["average", "", "band", None, 3, dist.ReduceOp])
def test_check_reduce_op_names_the_bad_value_and_the_choices(bad: object) -> None:
    with pytest.raises(ValueError) as err:
        check_reduce_op(bad)
    message = str(err.value)
    assert f"Unknown reduce_op {bad!r}" in message
    assert (
        "Choose one of: mean, avg, sum, min, max, product (case-insensitive), or a torch.distributed.ReduceOp"
        in message
    )


def test_reduce_op_names_match_the_literal_type() -> None:
    assert set(get_args(ReduceOpName)) == set(REDUCE_OP_NAMES)


@pytest.mark.parametrize(("bad", "error"), [("2", TypeError), (2.0, TypeError), (True, TypeError), (0, ValueError)])
def test_check_num_nodes_names_the_bad_value(bad: object, error: type[Exception]) -> None:
    assert check_num_nodes(3) == 3
    with pytest.raises(error, match=f"num_nodes={bad!r} .*int >= 1"):
        check_num_nodes(bad)


def test_path_like_accepts_str_and_path() -> None:
    assert set(get_args(PathLike)) == {str, Path}


class Counter:
    def __init__(self) -> None:
        self.count = 0

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.count = state_dict["count"]


class PrintLogger:
    @property
    def name(self) -> str | None:
        return "print"

    @property
    def version(self) -> int | str | None:
        return 0

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        print(metrics, step)

    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        print(params)

    def save(self) -> None:
        return None

    def finalize(self, status: str) -> None:
        return None


class HalfLogger:
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        print(metrics)


def test_stateful_protocol_is_checked_at_runtime() -> None:
    assert isinstance(Counter(), Stateful)
    assert isinstance(torch.nn.Linear(1, 1), Stateful)
    assert isinstance(torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1), Stateful)
    assert not isinstance(object(), Stateful)
    assert not isinstance({"state_dict": 1}, Stateful)


def test_logger_protocol_needs_every_member() -> None:
    assert isinstance(PrintLogger(), Logger)
    assert not isinstance(HalfLogger(), Logger)


def test_optimizers_are_optimizable_and_steppable() -> None:
    optimizer = torch.optim.Adam(torch.nn.Linear(1, 1).parameters())
    assert isinstance(optimizer, Optimizable)
    assert isinstance(optimizer, Steppable)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    assert isinstance(scheduler, Steppable)
    assert not isinstance(Counter(), Steppable)
    assert not isinstance(scheduler, Optimizable)


def test_lightning_collective_types_are_importable_from_fabric_utils() -> None:
    import torch.distributed as dist

    from fabric_utils import CollectibleGroup, RedOpType, ReduceOp

    assert ReduceOp is dist.ReduceOp
    assert isinstance(dist.ReduceOp.SUM, RedOpType)
    assert not isinstance(object(), CollectibleGroup)
