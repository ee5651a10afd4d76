from __future__ import annotations

import copy
import pickle

import pytest

from fabric_utils import AttributeDict


def test_keys_read_and_write_as_attributes() -> None:
    params = AttributeDict(lr=0.1, layers=[1, 2])
    assert params.lr == 0.1
    params.batch_size = 32
    assert params["batch_size"] == 32
    params["name"] = "run"
    assert params.name == "run"
    del params.lr
    assert "lr" not in params
    assert isinstance(params, dict)


def test_missing_attributes_raise_attribute_error_naming_the_key() -> None:
    params = AttributeDict(a=1)
    with pytest.raises(AttributeError, match="'AttributeDict' has no attribute 'missing'"):
        _ = params.missing
    with pytest.raises(AttributeError, match="missing"):
        del params.missing
    assert not hasattr(params, "missing")
    assert getattr(params, "missing", "fallback") == "fallback"


def test_copy_and_pickle_round_trip() -> None:
    params = AttributeDict(a=1, nested={"b": 2})
    assert pickle.loads(pickle.dumps(params)) == params
    assert type(pickle.loads(pickle.dumps(params))) is AttributeDict
    deep = copy.deepcopy(params)
    deep.nested["b"] = 3
    assert params.nested["b"] == 2
    assert type(copy.copy(params)) is AttributeDict


def test_repr_lists_sorted_aligned_items() -> None:
    params = AttributeDict(lr=0.1, batch_size=32)
    assert repr(params) == "'batch_size': 32\n        'lr': 0.1"
    assert repr(AttributeDict()) == ""
