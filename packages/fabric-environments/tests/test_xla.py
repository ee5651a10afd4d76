from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest

from fabric_environments import XLAEnvironment
from fabric_testing import RunIf
from fabric_utils import TORCH_XLA, FabricWarning, MissingDependencyError, override_hardware


class _FakeRuntime(ModuleType):
    """Stands in for ``torch_xla.runtime`` on machines without torch_xla; counts how often it is asked."""

    def __init__(self) -> None:
        super().__init__("torch_xla.runtime")
        self.calls: dict[str, int] = {}
        self.answers = {"world_size": 8, "global_ordinal": 5, "local_ordinal": 1}

    def __getattr__(self, name: str) -> object:
        if name not in self.__dict__.get("answers", {}):
            raise AttributeError(name)

        def answer() -> int:
            self.calls[name] = self.calls.get(name, 0) + 1
            return self.answers[name]

        return answer


@pytest.fixture
def fake_xla(monkeypatch: pytest.MonkeyPatch) -> Iterator[_FakeRuntime]:
    if TORCH_XLA.available:
        pytest.skip("a real torch_xla is installed: the fake is only for machines without one")
    runtime = _FakeRuntime()
    package = ModuleType("torch_xla")
    package.runtime = runtime  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch_xla", package)
    monkeypatch.setitem(sys.modules, "torch_xla.runtime", runtime)
    with override_hardware(xla_available=True):
        yield runtime


def test_values_come_from_the_runtime(fake_xla: _FakeRuntime) -> None:
    env = XLAEnvironment()
    assert not env.creates_processes_externally
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (8, 5, 1, 0)


def test_world_size_is_asked_once(fake_xla: _FakeRuntime) -> None:
    env = XLAEnvironment()
    assert [env.world_size() for _ in range(3)] == [8, 8, 8]
    assert fake_xla.calls["world_size"] == 1
    env.teardown()
    env.world_size()
    assert fake_xla.calls["world_size"] == 2


@pytest.mark.parametrize("variable", ["XRT_HOST_ORDINAL", "TPU_WORKER_ID", "CLOUD_TPU_TASK_ID"])
def test_node_rank_from_the_host_variables(
    fake_xla: _FakeRuntime, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "3")
    assert XLAEnvironment().node_rank() == 3


def test_validate_ranks_reads_only_the_host_variable(fake_xla: _FakeRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking the runtime before the launcher starts the processes would initialise it in the parent process."""
    XLAEnvironment().validate_ranks()
    monkeypatch.setenv("TPU_WORKER_ID", "-1")
    with pytest.raises(ValueError, match=r"TPU_WORKER_ID=-1 must satisfy 0 <= TPU_WORKER_ID"):
        XLAEnvironment().validate_ranks()
    monkeypatch.setenv("TPU_WORKER_ID", "one")
    with pytest.raises(ValueError, match=r"TPU_WORKER_ID='one' must be an integer"):
        XLAEnvironment().validate_ranks()
    assert fake_xla.calls == {}


def test_no_main_address_or_port(fake_xla: _FakeRuntime) -> None:
    env = XLAEnvironment()
    with pytest.raises(NotImplementedError, match="PJRT"):
        env.main_address  # noqa: B018
    with pytest.raises(NotImplementedError, match="PJRT"):
        env.main_port  # noqa: B018


def test_setters_are_ignored(fake_xla: _FakeRuntime) -> None:
    env = XLAEnvironment()
    with pytest.warns(FabricWarning, match=r"set_global_rank\(0\) was ignored"):
        env.set_global_rank(0)
    env.set_world_size(8)
    assert env.global_rank() == 5


def test_detect_needs_torch_xla_and_pjrt_device(monkeypatch: pytest.MonkeyPatch) -> None:
    with override_hardware(xla_available=True):
        assert not XLAEnvironment.detect()
        monkeypatch.setenv("PJRT_DEVICE", "TPU")
        assert XLAEnvironment.detect()
    with override_hardware(xla_available=False):
        assert not XLAEnvironment.detect()


def test_detect_does_not_import_torch_xla(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJRT_DEVICE", "TPU")
    before = "torch_xla" in sys.modules
    XLAEnvironment.detect()
    assert ("torch_xla" in sys.modules) == before


def test_constructor_needs_torch_xla() -> None:
    with override_hardware(xla_available=False), pytest.raises(MissingDependencyError, match="pip install torch-xla"):
        XLAEnvironment()


@RunIf(xla=True)
def test_real_runtime() -> None:
    env = XLAEnvironment()
    world_size = env.world_size()
    assert world_size >= 1
    assert 0 <= env.global_rank() < world_size
    assert 0 <= env.local_rank() <= env.global_rank()
    assert env.node_rank() >= 0


def test_no_os_environ_writes(fake_xla: _FakeRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJRT_DEVICE", "TPU")
    before = dict(os.environ)
    env = XLAEnvironment()
    XLAEnvironment.detect()
    env.creates_processes_externally  # noqa: B018
    (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank())
    env.validate_settings(num_devices=8, num_nodes=1)
    env.teardown()
    assert dict(os.environ) == before
