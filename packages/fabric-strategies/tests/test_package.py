"""The public surface of fabric_strategies is deliberate: removing a name must change this test.

``EXPECTED`` lists the names of part 1 (single device, DP, DDP, launchers, collectives, teardown); the sharded and
DeepSpeed/XLA strategies add their own names next to them.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import fabric_strategies

EXPECTED = {
    "DEFAULT_TIMEOUT",
    "STRATEGY_REGISTRY",
    "Collective",
    "DDPStrategy",
    "DataParallelStrategy",
    "Launcher",
    "MissingStateKeyError",
    "MultiprocessingLauncher",
    "ParallelStrategy",
    "ProcessFailedError",
    "RemoteTraceback",
    "SingleDeviceCollective",
    "SingleDeviceStrategy",
    "Strategy",
    "SubprocessScriptLauncher",
    "TorchCollective",
    "all_gather_tensor",
    "all_reduce_tensor",
    "call_at_exit",
    "default_process_group_backend",
    "destroy_process_group_cleanly",
    "gather_all_tensors",
    "is_shared_filesystem",
    "release_ddp_wrapper",
    "resolve_strategy_name",
    "unwrap_module",
}


def test_public_names_are_kept_and_importable():
    assert set(fabric_strategies.__all__) >= EXPECTED
    assert len(set(fabric_strategies.__all__)) == len(fabric_strategies.__all__)
    for name in fabric_strategies.__all__:
        assert getattr(fabric_strategies, name) is not None


def _run_fresh(code: str) -> str:
    """Run ``code`` in a fresh interpreter (other tests in this session import deepspeed on purpose); its stdout."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_has_no_side_effects_on_the_environment():
    code = (
        "import os, sys; before = dict(os.environ); import fabric_strategies; "
        "assert dict(os.environ) == before, 'environment changed'; "
        "heavy = [m for m in ('deepspeed', 'torch_xla', 'mpi4py') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    _run_fresh(code)


ON_ACCESS_MODULES = (
    "fabric_strategies.deepspeed",
    "fabric_strategies.fsdp",
    "fabric_strategies.model_parallel",
    "fabric_strategies.xla",
)


def test_sharded_deepspeed_and_xla_modules_load_on_first_access():
    code = (
        "import sys, fabric_strategies as s\n"
        f"modules = {ON_ACCESS_MODULES!r}\n"
        "print([m for m in modules if m in sys.modules])\n"
        "names = s.STRATEGY_REGISTRY.names(); s.STRATEGY_REGISTRY.descriptions(); 'fsdp' in s.STRATEGY_REGISTRY\n"
        "print([m for m in modules if m in sys.modules])\n"
        "assert 'FSDPStrategy' in dir(s)\n"
        "print(s.FSDPStrategy.__module__, s.STRATEGY_REGISTRY.get('fsdp') is s.FSDPStrategy)\n"
        "print([m for m in modules if m in sys.modules])\n"
    )
    before, after_listing, loaded, after_access = _run_fresh(code).splitlines()
    assert before == after_listing == "[]"
    assert loaded == "fabric_strategies.fsdp.strategy True"
    assert after_access == "['fabric_strategies.fsdp']"


def test_an_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'FSDPStrategyy'"):
        fabric_strategies.FSDPStrategyy  # noqa: B018


def test_the_listed_names_match_what_each_class_registers():
    from fabric_strategies.catalog import LISTED_STRATEGIES
    from fabric_utils import Registry

    listed = {entry.name: entry for entry in LISTED_STRATEGIES}
    classes = {entry.target for entry in LISTED_STRATEGIES}
    registry: Registry[fabric_strategies.Strategy] = Registry("strategy")
    for target in sorted(classes):
        module, _, attribute = target.partition(":")
        cls = getattr(__import__(module, fromlist=[attribute]), attribute)
        cls.register_strategies(registry)
        assert getattr(fabric_strategies, attribute) is cls
    assert registry.names() == sorted(listed)
    for name in listed:
        entry = registry.entry(name)
        assert entry.description == listed[name].description
        assert entry.init_kwargs == listed[name].options
        assert fabric_strategies.STRATEGY_REGISTRY.entry(name).factory is entry.factory
