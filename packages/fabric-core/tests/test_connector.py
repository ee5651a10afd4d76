"""The connector: pure resolution of flags + FABRIC_* variables into a plan, and building the parts from it."""

from __future__ import annotations

import warnings
from typing import ClassVar, get_args

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric_accelerators import ACCELERATOR_REGISTRY, CPUAccelerator
from fabric_core.connector import (
    AcceleratorName,
    Plan,
    StrategyName,
    build,
    pick_strategy_name,
    resolve_plan,
    split_plugins,
)
from fabric_environments import LightningEnvironment, SLURMEnvironment, TorchElasticEnvironment
from fabric_io import TorchCheckpointIO
from fabric_precision import Precision, precision_plugin
from fabric_strategies import STRATEGY_REGISTRY, DDPStrategy, SingleDeviceStrategy
from fabric_testing import RunIf
from fabric_utils import override_hardware


def plan(**kwargs: object) -> Plan:
    kwargs.setdefault("environ", {})
    kwargs.setdefault("interactive", False)
    return resolve_plan(**kwargs)  # type: ignore[arg-type]


def test_the_name_types_list_exactly_the_registered_names() -> None:
    """The Literal types are for editors; the registries are the one list of names, and these types follow them."""
    assert sorted(get_args(StrategyName)) == sorted(["auto", *STRATEGY_REGISTRY.names()])
    assert sorted(get_args(AcceleratorName)) == sorted(["auto", "gpu", *ACCELERATOR_REGISTRY.names()])


def test_defaults_resolve_to_one_cpu_process_in_full_precision() -> None:
    resolved = plan()
    assert (resolved.accelerator, resolved.strategy, resolved.precision) == ("cpu", "single_device", "32-true")
    assert resolved.parallel_devices == (torch.device("cpu"),)
    assert resolved.num_nodes == 1


@pytest.mark.parametrize(
    ("devices", "num_nodes", "interactive", "expected"),
    [(1, 1, False, "single_device"), (2, 1, False, "ddp"), ("2", 1, True, "ddp_fork"), (1, 2, False, "ddp")],
)
def test_auto_strategy_follows_process_count(devices: object, num_nodes: int, interactive: bool, expected: str) -> None:
    resolved = plan(accelerator="cpu", devices=devices, num_nodes=num_nodes, interactive=interactive)
    assert resolved.strategy == expected


@pytest.mark.parametrize(("devices", "expected"), [(1, "single_xla"), (8, "xla")])
def test_auto_strategy_on_xla(devices: int, expected: str) -> None:
    chosen = pick_strategy_name(
        "auto", device_type="xla", accelerator="xla", num_devices=devices, num_nodes=1, interactive=True
    )
    assert chosen == expected


def test_environment_variables_fill_unset_flags() -> None:
    environ = {
        "FABRIC_ACCELERATOR": "cpu",
        "FABRIC_STRATEGY": "ddp",
        "FABRIC_DEVICES": "2",
        "FABRIC_NUM_NODES": "3",
        "FABRIC_PRECISION": "bf16-mixed",
    }
    resolved = plan(environ=environ)
    assert (resolved.accelerator, resolved.strategy, resolved.num_processes) == ("cpu", "ddp", 2)
    assert (resolved.num_nodes, resolved.precision) == (3, "bf16-mixed")


def test_explicit_flags_equal_to_environment_are_accepted() -> None:
    environ = {"FABRIC_STRATEGY": "ddp", "FABRIC_DEVICES": "2", "FABRIC_PRECISION": "bf16-mixed"}
    with pytest.warns(UserWarning, match="bf16-mixed"):  # "bf16" is an alias, announced by a warning
        resolved = plan(strategy="ddp", devices=2, precision="bf16", environ=environ)
    assert (resolved.strategy, resolved.num_processes, resolved.precision) == ("ddp", 2, "bf16-mixed")


@pytest.mark.parametrize(
    ("flag", "value", "variable", "env_value"),
    [
        ("strategy", "ddp_spawn", "FABRIC_STRATEGY", "ddp"),
        ("devices", 3, "FABRIC_DEVICES", "2"),
        ("precision", "64-true", "FABRIC_PRECISION", "bf16-mixed"),
        ("num_nodes", 2, "FABRIC_NUM_NODES", "4"),
        ("accelerator", "cpu", "FABRIC_ACCELERATOR", "cuda"),
    ],
)
def test_conflicting_explicit_flag_names_both_values(flag: str, value: object, variable: str, env_value: str) -> None:
    with pytest.raises(ValueError, match=variable) as info:
        plan(**{flag: value}, environ={variable: env_value})
    assert repr(value) in str(info.value)
    assert repr(env_value) in str(info.value)


def test_strategy_instance_is_checked_against_the_environment() -> None:
    assert plan(strategy=DDPStrategy(), devices=2, environ={"FABRIC_STRATEGY": "ddp"}).strategy == "ddp"
    with pytest.raises(ValueError, match="FABRIC_STRATEGY='ddp_spawn'"):
        plan(strategy=DDPStrategy(), devices=2, environ={"FABRIC_STRATEGY": "ddp_spawn"})


@pytest.mark.parametrize(
    ("kwargs", "named", "listed"),
    [
        ({"accelerator": "tpuu"}, "'tpuu'", "cpu"),
        ({"strategy": "ddpp"}, "'ddpp'", "ddp_spawn"),
        ({"precision": "15-mixed"}, "15-mixed", "bf16-mixed"),
    ],
)
def test_unknown_names_list_the_choices(kwargs: dict[str, str], named: str, listed: str) -> None:
    with pytest.raises(ValueError) as info:
        plan(**kwargs)
    assert named in str(info.value)
    assert listed in str(info.value)


def test_unavailable_hardware_is_refused_and_lists_what_exists() -> None:
    with override_hardware(cuda_device_count=0, mps_available=False), pytest.raises(ValueError, match="cuda") as info:
        plan(accelerator="cuda")
    assert "cpu" in str(info.value)
    with override_hardware(cuda_device_count=0, mps_available=False), pytest.raises(ValueError, match="gpu"):
        plan(accelerator="gpu")


def test_auto_prefers_cuda_over_cpu_and_uses_every_device() -> None:
    with override_hardware(cuda_device_count=4):
        resolved = plan()
        assert resolved.accelerator == "cuda"
        assert resolved.strategy == "ddp"
        assert resolved.parallel_devices == tuple(torch.device("cuda", i) for i in range(4))
        assert plan(accelerator="gpu", devices="1,3").parallel_devices == (
            torch.device("cuda", 1),
            torch.device("cuda", 3),
        )
        with pytest.raises(ValueError, match="7"):
            plan(accelerator="cuda", devices=[7])


def test_mps_cannot_run_ddp() -> None:
    with override_hardware(cuda_device_count=0, mps_available=True):
        assert plan(accelerator="gpu").accelerator == "mps"
        with pytest.raises(ValueError, match=r"'ddp'.*MPS"):
            plan(accelerator="mps", strategy="ddp")


def test_dp_on_cpu_falls_back_to_ddp_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="'dp'.*'ddp'"):
        resolved = plan(accelerator="cpu", strategy="dp", devices=2)
    assert resolved.strategy == "ddp"


def test_single_device_strategy_with_several_devices_is_refused() -> None:
    with pytest.raises(ValueError, match="devices=2"):
        plan(accelerator="cpu", strategy=SingleDeviceStrategy(), devices=2)


class _Fp32OnlyStrategy(SingleDeviceStrategy):
    """A single-device strategy that only supports full precision (registered by a test)."""

    name: ClassVar[str] = "fp32_only_test"
    supported_precisions: ClassVar[tuple[str, ...] | None] = ("32-true",)


def test_precision_unsupported_by_strategy_names_both() -> None:
    STRATEGY_REGISTRY.register("fp32_only_test", _Fp32OnlyStrategy)
    try:
        assert plan(strategy="fp32_only_test").strategy == "fp32_only_test"
        with pytest.raises(ValueError, match=r"'bf16-mixed'.*'fp32_only_test'.*32-true"):
            plan(strategy="fp32_only_test", precision="bf16-mixed")
    finally:
        STRATEGY_REGISTRY.remove("fp32_only_test")


def test_plugins_are_sorted_by_kind_and_duplicates_refused() -> None:
    environment, io = LightningEnvironment(), TorchCheckpointIO()
    assert split_plugins([io, environment]) == (None, environment, io)
    with pytest.raises(ValueError, match="several Precision plugins"):
        split_plugins([Precision(), precision_plugin("bf16-mixed")])
    with pytest.raises(ValueError, match="several ClusterEnvironment plugins"):
        split_plugins([LightningEnvironment(), SLURMEnvironment()])
    with pytest.raises(ValueError, match="several CheckpointIO plugins"):
        split_plugins([TorchCheckpointIO(), TorchCheckpointIO()])
    with pytest.raises(TypeError, match="'not a plugin'"):
        split_plugins(["not a plugin"])


def test_precision_plugin_and_conflicting_flag_are_refused() -> None:
    plugin = precision_plugin("bf16-mixed")
    assert plan(plugins=plugin).precision == "bf16-mixed"
    assert plan(plugins=plugin, precision="bf16-mixed").precision == "bf16-mixed"
    with pytest.raises(ValueError, match="'64-true'"):
        plan(plugins=plugin, precision="64-true")


def test_build_assembles_complete_parts() -> None:
    parts = build(plan(accelerator="cpu", strategy="ddp", devices=2, precision="bf16-mixed"))
    assert isinstance(parts.strategy, DDPStrategy)
    assert isinstance(parts.accelerator, CPUAccelerator)
    assert parts.strategy.accelerator is parts.accelerator
    assert parts.precision.precision == "bf16-mixed"
    assert parts.strategy.precision is parts.precision
    assert isinstance(parts.cluster_environment, LightningEnvironment)
    assert parts.strategy.world_size == 2
    assert parts.strategy.launcher is not None


def test_an_accelerator_instance_is_used_as_given() -> None:
    accelerator = CPUAccelerator()
    resolved = plan(accelerator=accelerator, devices=2)
    assert resolved.accelerator_instance is accelerator
    assert build(resolved).accelerator is accelerator
    assert plan(accelerator=accelerator, environ={"FABRIC_ACCELERATOR": "cpu"}).accelerator == "cpu"
    with pytest.raises(ValueError, match="FABRIC_ACCELERATOR='cuda'"):
        plan(accelerator=accelerator, environ={"FABRIC_ACCELERATOR": "cuda"})


def test_build_keeps_the_users_plugins_and_strategy(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"RANK": "1", "LOCAL_RANK": "1", "GROUP_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("WORLD_SIZE", "2")
    strategy, io = DDPStrategy(), TorchCheckpointIO()
    parts = build(plan(strategy=strategy, devices=2, plugins=[io]))
    assert parts.strategy is strategy
    assert strategy.checkpoint_io is io
    assert isinstance(parts.cluster_environment, TorchElasticEnvironment)  # detected from the variables
    assert (strategy.global_rank, strategy.world_size) == (1, 2)
    assert strategy.launcher is None  # the processes exist already


def test_build_refuses_devices_that_contradict_the_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError):
        build(plan(accelerator="cpu", strategy="ddp", devices=3))


_flags = st.fixed_dictionaries(
    {
        "accelerator": st.sampled_from(["auto", "cpu", "gpu", "cuda", "mps", "tpu", "nope", 3]),
        "strategy": st.sampled_from(["auto", "ddp", "ddp_spawn", "dp", "single_device", "ddpp", None]),
        "devices": st.one_of(
            st.sampled_from(["auto", "1", "2", "-1", "0,1", "x", "", "0"]),
            st.integers(-3, 4),
            st.lists(st.integers(-1, 3), max_size=3),
            st.none(),
        ),
        "num_nodes": st.one_of(st.integers(-1, 3), st.sampled_from(["2", "x", None, 1.5])),
        "precision": st.sampled_from([None, "32-true", "bf16-mixed", "16-mixed", "64", 32, "bf16", "fp8", 7]),
    }
)


@settings(max_examples=150, deadline=None)
@given(flags=_flags)
def test_every_flag_combination_builds_or_raises_a_value_or_type_error(flags: dict[str, object]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            build(plan(**flags))
        except (ValueError, TypeError):
            pass


@pytest.mark.parametrize("num_nodes", ["2", 2.0, True, None])
def test_num_nodes_must_be_an_int(num_nodes: object) -> None:
    with pytest.raises(TypeError) as info:
        plan(num_nodes=num_nodes)
    assert f"num_nodes={num_nodes!r} must be an int >= 1, got {type(num_nodes).__name__}" in str(info.value)


@pytest.mark.parametrize("env_value", ["0", "two", "-1", "1.5"])
def test_a_bad_num_nodes_variable_is_named(env_value: str) -> None:
    with pytest.raises(ValueError, match=f"FABRIC_NUM_NODES={env_value!r}.*int >= 1"):
        plan(environ={"FABRIC_NUM_NODES": env_value})
    assert plan(num_nodes=2, environ={"FABRIC_NUM_NODES": " 2"}).num_nodes == 2


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"accelerator": "CPUU"}, "Unknown accelerator 'CPUU'"),
        ({"accelerator": "Cuda"}, "accelerator='Cuda'` is not available"),
        ({"accelerator": "GPU"}, "accelerator='GPU'` needs CUDA or MPS"),
        ({"strategy": "DDPP"}, "Unknown strategy 'DDPP'"),
        ({"strategy": "XLA"}, "strategy='XLA' does not run on 'cpu' devices"),
        ({"precision": "BF16-Mixed"}, "Unknown precision 'BF16-Mixed' (did you mean 'bf16-mixed'?)"),
    ],
)
def test_errors_name_the_value_as_written(kwargs: dict[str, str], named: str) -> None:
    with override_hardware(cuda_device_count=0, mps_available=False), pytest.raises(ValueError) as info:
        plan(**kwargs)
    assert named in str(info.value)


@pytest.mark.parametrize(("strategy", "devices"), [("auto", 1), ("ddp", 2), ("fsdp", 2)])
def test_mixed_precision_autocasts_on_the_device_type_of_the_accelerator(strategy: str, devices: int) -> None:
    with override_hardware(cuda_device_count=2):
        parts = build(plan(accelerator="cuda", strategy=strategy, devices=devices, precision="bf16-mixed"))
    assert parts.strategy.root_device == torch.device("cuda", 0)
    assert parts.precision.device_type == "cuda"  # type: ignore[attr-defined]
    on_cpu = build(plan(accelerator="cpu", strategy=strategy, devices=devices, precision="bf16-mixed"))
    assert on_cpu.precision.device_type == "cpu"  # type: ignore[attr-defined]


@RunIf(min_cuda_gpus=1)
def test_mixed_precision_autocasts_a_real_cuda_forward() -> None:
    parts = build(plan(accelerator="cuda", devices=1, precision="bf16-mixed"))
    layer = torch.nn.Linear(4, 4, device=parts.strategy.root_device)
    with parts.precision.forward_context():
        assert layer(torch.ones(2, 4, device=parts.strategy.root_device)).dtype == torch.bfloat16
