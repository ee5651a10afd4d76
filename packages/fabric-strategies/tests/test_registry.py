"""STRATEGY_REGISTRY: every name, its description, its configuration; unknown names list the choices."""

from __future__ import annotations

import pytest

from fabric_strategies import STRATEGY_REGISTRY, DataParallelStrategy, DDPStrategy, SingleDeviceStrategy, Strategy
from fabric_strategies.registry import resolve_strategy_name
from fabric_utils import Registry, UnknownNameError

REQUIRED = ("dp", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_find_unused_parameters_true")


def test_every_required_name_is_registered_with_a_one_line_description():
    descriptions = STRATEGY_REGISTRY.descriptions()
    for name in (*REQUIRED, "single_device"):
        assert name in STRATEGY_REGISTRY
        assert descriptions[name]
        assert "\n" not in descriptions[name]
    assert list(STRATEGY_REGISTRY) == sorted(STRATEGY_REGISTRY.names())
    assert STRATEGY_REGISTRY.entry_point_group == "fabric.strategies"


def test_names_build_their_strategy_class():
    assert type(STRATEGY_REGISTRY.create("single_device")) is SingleDeviceStrategy
    assert STRATEGY_REGISTRY.get("dp") is DataParallelStrategy
    built = STRATEGY_REGISTRY.create("ddp_spawn", static_graph=True)
    assert isinstance(built, DDPStrategy)
    assert built.start_method == "spawn"
    assert built.ddp_kwargs == {"static_graph": True}


def test_unknown_names_list_every_choice():
    with pytest.raises(UnknownNameError, match=r"Unknown strategy 'ddpp'. Choose one of: .*ddp, ddp_find_unused"):
        STRATEGY_REGISTRY.create("ddpp")
    with pytest.raises(UnknownNameError, match=r"'ddpp'"):
        resolve_strategy_name("ddpp", "cpu")


def test_a_strategy_registers_into_another_registry_and_device_rules_apply():
    class GPUOnly(SingleDeviceStrategy):
        """Runs on CUDA only."""

        name = "gpu_only"
        supported_device_types = ("cuda",)

    registry: Registry[Strategy] = Registry("strategy")
    GPUOnly.register_strategies(registry)
    assert registry.descriptions() == {"gpu_only": "Runs on CUDA only."}
    with pytest.raises(ValueError, match=r"'gpu_only' does not run on 'cpu' devices.*cuda"):
        resolve_strategy_name("gpu_only", "cpu", registry)
