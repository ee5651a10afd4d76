"""Fixtures of the fabric-precision tests: hiding an installed optional package, and a stand-in torch_xla."""

from __future__ import annotations

import importlib.machinery
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fabric_utils import TORCH_XLA, module_available


@pytest.fixture
def hide_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Make an installed package look absent (``import`` fails, availability checks say False) for one test."""

    def hide(name: str) -> None:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, name, None)
        module_available.cache_clear()

    yield hide
    module_available.cache_clear()


def _fake_module(name: str, is_package: bool, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=is_package)
    if is_package:
        module.__path__ = []
    for key, value in attributes.items():
        setattr(module, key, value)
    return module


@pytest.fixture
def fake_torch_xla(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """A stand-in ``torch_xla`` for machines without one (skips where a real one exists: RunIf(xla=True) tests
    cover that). Its ``xm.optimizer_step`` behaves as on a single replica, where there are no gradients to reduce
    across devices: it steps the optimizer with ``optimizer_args``. Yields the ``optimizer_args`` of every call."""
    if TORCH_XLA.available:
        pytest.skip("a real torch_xla is installed; the tests marked RunIf(xla=True) use it")
    calls: list[dict[str, Any]] = []

    def optimizer_step(
        optimizer: Any, barrier: bool = False, optimizer_args: dict[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        arguments = dict(optimizer_args or {})
        calls.append(arguments)
        return optimizer.step(**arguments)

    xla_model = _fake_module("torch_xla.core.xla_model", False, optimizer_step=optimizer_step)
    core = _fake_module("torch_xla.core", True, xla_model=xla_model)
    root = _fake_module("torch_xla", True, core=core)
    for module in (root, core, xla_model):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    module_available.cache_clear()
    yield calls
    module_available.cache_clear()
