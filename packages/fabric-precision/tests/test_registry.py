"""parse_precision, PRECISION_REGISTRY and precision_plugin."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

from fabric_precision import (
    PRECISION_REGISTRY,
    DoublePrecision,
    HalfPrecision,
    MixedPrecision,
    Precision,
    parse_precision,
    precision_plugin,
)
from fabric_utils import Registry

CANONICAL = [
    "16-mixed",
    "16-true",
    "32-true",
    "64-true",
    "bf16-mixed",
    "bf16-true",
    "transformer-engine",
    "transformer-engine-float16",
]


def test_registry_holds_the_canonical_names() -> None:
    assert isinstance(PRECISION_REGISTRY, Registry)
    assert PRECISION_REGISTRY.entry_point_group == "fabric.precision"
    assert list(PRECISION_REGISTRY) == CANONICAL
    assert all(PRECISION_REGISTRY.descriptions().values())


@pytest.mark.parametrize("name", CANONICAL)
def test_canonical_names_parse_to_themselves_silently(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parse_precision(name) == name


@pytest.mark.parametrize(
    ("value", "expected"), [(64, "64-true"), ("64", "64-true"), (32, "32-true"), ("32", "32-true")]
)
def test_silent_aliases(value: Any, expected: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parse_precision(value) == expected


@pytest.mark.parametrize(("value", "expected"), [(16, "16-mixed"), ("16", "16-mixed"), ("bf16", "bf16-mixed")])
def test_aliases_with_a_warning(value: Any, expected: str) -> None:
    with pytest.warns(UserWarning, match=f"means '{expected}'"):
        assert parse_precision(value) == expected


@pytest.mark.parametrize("value", ["17", 8, "fp8", "BF16-MIXED", "bf16_mixed", True, 16.0, None, "", "bnb"])
def test_unknown_values_raise_and_list_the_valid_ones(value: Any) -> None:
    with pytest.raises(ValueError, match=r"Unknown precision .*Choose one of: 64, 32, 16, bf16, 16-mixed") as err:
        parse_precision(value)
    assert repr(value) in str(err.value)
    for name in CANONICAL:
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("value", "cls", "canonical"),
    [
        ("32-true", Precision, "32-true"),
        (64, DoublePrecision, "64-true"),
        ("16-true", HalfPrecision, "16-true"),
        ("bf16-true", HalfPrecision, "bf16-true"),
        ("16-mixed", MixedPrecision, "16-mixed"),
        ("bf16-mixed", MixedPrecision, "bf16-mixed"),
    ],
)
def test_precision_plugin_builds_the_plugin(value: Any, cls: type, canonical: str) -> None:
    plugin = precision_plugin(value)
    assert type(plugin) is cls
    assert plugin.precision == canonical


def test_precision_plugin_passes_the_device_type_where_taken() -> None:
    plugin = precision_plugin("bf16-mixed", device_type="cuda")
    assert isinstance(plugin, MixedPrecision)
    assert plugin.device_type == "cuda"
    assert isinstance(precision_plugin("16-mixed").scaler, torch.amp.GradScaler)
    assert type(precision_plugin("64-true", device_type="cuda")) is DoublePrecision
    with pytest.warns(UserWarning, match="means '16-mixed'"):
        assert precision_plugin(16).precision == "16-mixed"


class ThirdPartyPrecision(Precision):
    precision = "int4-experimental"

    def __init__(self, device_type: str = "cpu", **options: Any) -> None:
        self.device_type = device_type
        self.options = options


def test_registered_names_are_parsed_and_built() -> None:
    PRECISION_REGISTRY.register("int4-experimental", ThirdPartyPrecision, group_size=64)
    try:
        assert parse_precision("int4-experimental") == "int4-experimental"
        plugin = precision_plugin("int4-experimental", device_type="cuda")
        assert isinstance(plugin, ThirdPartyPrecision)
        assert plugin.device_type == "cuda"
        assert plugin.options == {"group_size": 64}
    finally:
        PRECISION_REGISTRY.remove("int4-experimental")
    with pytest.raises(ValueError, match="Unknown precision 'int4-experimental'"):
        parse_precision("int4-experimental")


def test_factories_without_device_type_get_none() -> None:
    def factory() -> Precision:
        return Precision()

    def flexible(**kwargs: Any) -> Precision:
        plugin = Precision()
        plugin.precision = f"flexible-{kwargs['device_type']}"
        return plugin

    PRECISION_REGISTRY.register("plain-factory", factory)
    PRECISION_REGISTRY.register("flexible-factory", flexible)
    try:
        assert type(precision_plugin("plain-factory", device_type="cuda")) is Precision
        assert precision_plugin("flexible-factory", device_type="mps").precision == "flexible-mps"
    finally:
        PRECISION_REGISTRY.remove("plain-factory")
        PRECISION_REGISTRY.remove("flexible-factory")


@pytest.mark.parametrize("name", CANONICAL[:6])
def test_plugins_survive_pickling_for_spawned_processes(name: str) -> None:
    import pickle

    plugin = precision_plugin(name)
    restored = pickle.loads(pickle.dumps(plugin))
    assert type(restored) is type(plugin)
    assert restored.precision == plugin.precision
    assert restored.state_dict() == plugin.state_dict()
