"""The ``fake_xla`` fixture: a stand-in ``torch_xla`` package (``fake_torch_xla/``) put on ``sys.path`` for a test,
only where no real torch_xla is installed (the tests marked ``RunIf(xla=True)`` use a real one)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from fabric_utils import module_available

FAKE_ROOT = Path(__file__).parent / "fake_torch_xla"

# the fake is a package of modules to import, not tests to collect
collect_ignore = ["fake_torch_xla"]


def _forget_torch_xla() -> None:
    for name in [m for m in sys.modules if m == "torch_xla" or m.startswith("torch_xla.")]:
        del sys.modules[name]
    module_available.cache_clear()


@pytest.fixture
def fake_xla(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """Install the fake ``torch_xla``; yields its ``_fake`` module, whose ``state`` sets the world size and records
    the calls."""
    if "torch_xla" not in sys.modules and importlib.util.find_spec("torch_xla") is not None:
        pytest.skip("a real torch_xla is installed: the tests marked RunIf(xla=True) use it")
    monkeypatch.syspath_prepend(str(FAKE_ROOT))
    _forget_torch_xla()
    fake = importlib.import_module("torch_xla._fake")
    try:
        yield fake
    finally:
        _forget_torch_xla()
