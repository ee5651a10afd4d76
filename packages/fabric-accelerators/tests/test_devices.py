"""The shared ``devices`` parsing: accepted forms, and errors that name the value and what exists."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fabric_accelerators.devices import (
    check_device_type,
    describe_available,
    normalize_devices,
    parse_device_indices,
    parse_devices_string,
    parse_process_count,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("auto", "auto"),
        (" AUTO ", "auto"),
        ("2", 2),
        (" 3 ", 3),
        ("-1", -1),
        ("0", 0),
        ("0,1", [0, 1]),
        (" 0 , 2 ", [0, 2]),
        ("1,", [1]),
        (",1,,3,", [1, 3]),
    ],
)
def test_parse_devices_string(text, expected):
    assert parse_devices_string(text) == expected


@pytest.mark.parametrize("text", ["", " ", "cuda", "1.5", "0;1", ",", "a,b", "2x"])
def test_parse_devices_string_rejects_garbage(text):
    with pytest.raises(ValueError) as info:
        parse_devices_string(text)
    message = str(info.value)
    assert repr(text) in message
    assert '"auto"' in message  # lists the valid forms
    assert "-1 (all devices)" in message


@pytest.mark.parametrize(
    ("value", "expected"), [(3, 3), ((0, 1), [0, 1]), ([2], [2]), ("auto", "auto"), ("0,1", [0, 1])]
)
def test_normalize_devices(value, expected):
    assert normalize_devices(value) == expected


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(None, "NoneType"), (1.0, "float"), (True, "bool"), ({0: 1}, "dict"), (torch.device("cpu"), "device")],
)
def test_wrong_types_are_type_errors(value, type_name):
    with pytest.raises(TypeError) as info:
        normalize_devices(value)
    assert repr(value) in str(info.value)
    assert type_name in str(info.value)
    assert '"auto"' in str(info.value)


@pytest.mark.parametrize(("value", "bad"), [([0, 1.0], "1.0"), ([True], "True"), (("0", 1), "'0'")])
def test_non_int_indices_are_type_errors(value, bad):
    with pytest.raises(TypeError, match="Device indices must be ints") as info:
        normalize_devices(value)
    assert bad in str(info.value)


@pytest.mark.parametrize(("value", "expected"), [(1, 1), (4, 4), ("3", 3), ("auto", 1), (" 2 ", 2)])
def test_process_count(value, expected):
    assert parse_process_count(value) == expected


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (0, ValueError, "not a valid number of CPU processes"),
        ("0", ValueError, "not a valid number of CPU processes"),
        (-3, ValueError, "not a valid number of CPU processes"),
        (-1, ValueError, "all devices"),
        ("-1", ValueError, "all devices"),
        ([0, 1], TypeError, "have no indices"),
        ("0,1", TypeError, "have no indices"),
        (2.0, TypeError, "float"),
    ],
)
def test_process_count_errors(value, error, match):
    with pytest.raises(error, match=match) as info:
        parse_process_count(value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("auto", [0, 1, 2]),
        (-1, [0, 1, 2]),
        ("-1", [0, 1, 2]),
        (1, [0]),
        (3, [0, 1, 2]),
        ("2", [0, 1]),
        ([2, 0], [2, 0]),
        ((1,), [1]),
        ("1,2", [1, 2]),
        ("2,", [2]),
    ],
)
def test_device_indices(value, expected):
    assert parse_device_indices(value, available=3, kind="CUDA") == expected


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (0, "asks for no CUDA devices"),
        ("0", "asks for no CUDA devices"),
        (-2, "only negative value allowed is -1"),
        (4, "asks for 4 CUDA devices, but this machine has 3 CUDA devices \\(indices 0, 1, 2\\)"),
        ([0, 3], "indices \\[3\\] that do not exist: this machine has 3 CUDA devices"),
        ("1,5,7", "indices \\[5, 7\\] that do not exist"),
        ([1, 1], "repeats the device indices \\[1\\]"),
        ("0,2,0,2", "repeats the device indices \\[0, 2\\]"),
        ([-1], "negative device indices \\[-1\\]"),
        ([], "selects no CUDA devices"),
    ],
)
def test_device_indices_errors(value, match):
    with pytest.raises(ValueError, match=match) as info:
        parse_device_indices(value, available=3, kind="CUDA")
    assert f"devices={value!r}" in str(info.value)
    assert "this machine has 3 CUDA devices (indices 0, 1, 2)" in str(info.value)  # says what exists


def test_zero_devices_error_explains_how_to_pick_index_zero():
    with pytest.raises(ValueError, match='devices=\\[0\\] or "0,"'):
        parse_device_indices(0, available=2, kind="CUDA")


@pytest.mark.parametrize("value", ["auto", -1, 1, [0]])
def test_device_indices_when_none_exist(value):
    with pytest.raises(ValueError, match="this machine has no MPS devices"):
        parse_device_indices(value, available=0, kind="MPS")


@given(available=st.integers(1, 16), data=st.data())
def test_device_indices_accept_any_distinct_existing_indices(available, data):
    indices = data.draw(st.lists(st.integers(0, available - 1), min_size=1, unique=True))
    assert parse_device_indices(indices, available=available, kind="CUDA") == indices
    text = ",".join(map(str, indices)) + ","
    assert parse_device_indices(text, available=available, kind="CUDA") == indices
    count = data.draw(st.integers(1, available))
    assert parse_device_indices(count, available=available, kind="CUDA") == list(range(count))
    assert parse_device_indices(str(count), available=available, kind="CUDA") == list(range(count))


@given(available=st.integers(0, 8), count=st.integers(9, 1000))
def test_device_indices_reject_any_count_beyond_what_exists(available, count):
    with pytest.raises(ValueError, match=re.escape(describe_available("CUDA", available))):
        parse_device_indices(count, available=available, kind="CUDA")


def test_describe_available():
    assert describe_available("CUDA", 0) == "this machine has no CUDA devices"
    assert describe_available("MPS", 1) == "this machine has 1 MPS device (index 0)"
    assert describe_available("CUDA", 2) == "this machine has 2 CUDA devices (indices 0, 1)"


def test_check_device_type():
    check_device_type(torch.device("cuda", 1), "cuda", "CUDAAccelerator")
    with pytest.raises(ValueError, match="CUDAAccelerator sets up 'cuda' devices, got cpu"):
        check_device_type(torch.device("cpu"), "cuda", "CUDAAccelerator")
    with pytest.raises(TypeError, match=r"expects a torch\.device, got 'cuda:0'"):
        check_device_type("cuda:0", "cuda", "CUDAAccelerator")  # type: ignore[arg-type]
