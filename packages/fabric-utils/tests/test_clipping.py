"""The clipping-argument checks shared by Fabric and the strategies: each error names the call and the value."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from fabric_utils import check_clip_threshold, check_norm_type


@pytest.mark.parametrize(
    ("value", "error"),
    [
        *[(value, ValueError) for value in (-1.0, 0, -math.inf, math.inf, math.nan)],
        *[(value, TypeError) for value in ("1", True, None, torch.tensor(1.0), [1.0])],
    ],
)
def test_threshold_must_be_a_finite_number_above_zero(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        check_clip_threshold("max_norm", value, caller="fabric.clip_gradients")
    assert f"fabric.clip_gradients(max_norm={value!r})" in str(info.value)


def test_threshold_error_says_what_the_threshold_means() -> None:
    with pytest.raises(ValueError, match=r"clip_gradients\(clip_val=-2\.0\) is invalid.*clamped to \[-clip_val"):
        check_clip_threshold("clip_val", -2.0)
    with pytest.raises(ValueError, match=r"finite number > 0 \(the largest total norm"):
        check_clip_threshold("max_norm", 0.0)


@pytest.mark.parametrize("value", [1, 0.5, 1e-8, 1e8])
def test_threshold_accepts_positive_numbers(value: float) -> None:
    check_clip_threshold("clip_val", value)


@pytest.mark.parametrize("norm_type", [1, 2.0, 0.5, 3, math.inf, "inf", "INF", " inf"])
def test_norm_type_accepts_p_norm_orders_above_zero_and_infinity(norm_type: Any) -> None:
    check_norm_type(norm_type)


@pytest.mark.parametrize(
    ("norm_type", "error"),
    [
        *[(value, ValueError) for value in (0, -1.0, -math.inf, math.nan, "fro", "-inf")],
        *[(value, TypeError) for value in (None, True, [2.0])],
    ],
)
def test_norm_type_refuses_what_is_no_norm(norm_type: Any, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        check_norm_type(norm_type, caller="clip_grad_norm")
    assert f"clip_grad_norm(norm_type={norm_type!r})" in str(info.value)
