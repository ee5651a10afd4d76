"""The constructors of the built-in strategies keep the signatures code written for Lightning Fabric relies on.

``strategy_signatures.txt`` holds, for each public strategy class, ``inspect.signature(cls)`` as it was before the
constructors stopped repeating their parents' parameters: the names, their order, their kinds (positional or
keyword-only), defaults and annotations, which is also what ``help()`` and introspecting IDEs show. A change to any of
them must change that file on purpose.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import torch

import fabric_strategies
from fabric_environments import LightningEnvironment
from fabric_strategies import DataParallelStrategy, DDPStrategy, FSDPStrategy, SingleDeviceStrategy

SNAPSHOT = Path(__file__).with_name("strategy_signatures.txt")


def _strategy_classes() -> dict[str, type]:
    public = (getattr(fabric_strategies, name) for name in fabric_strategies.__all__)
    return {c.__name__: c for c in public if isinstance(c, type) and issubclass(c, fabric_strategies.Strategy)}


def _snapshot() -> dict[str, str]:
    lines = SNAPSHOT.read_text().splitlines()
    return dict(line.split(" ", 1) for line in lines if line)


def test_every_public_strategy_is_in_the_snapshot() -> None:
    assert sorted(_snapshot()) == sorted(_strategy_classes())


@pytest.mark.parametrize("name", sorted(_snapshot()))
def test_signature_unchanged(name: str) -> None:
    assert str(inspect.signature(_strategy_classes()[name])) == _snapshot()[name]


@pytest.mark.parametrize("name", sorted(_snapshot()))
def test_init_shows_the_same_parameters_after_self(name: str) -> None:
    """``help(cls)`` renders ``cls.__init__``: ``self`` first (positional or keyword, as in a plain method), then the
    parameters above."""
    assert str(inspect.signature(_strategy_classes()[name].__init__)) == "(self, " + _snapshot()[name][1:]


def test_shared_parameters_bind_by_position() -> None:
    """Lightning Fabric code may pass the shared parameters by position; each lands where it did."""
    environment = LightningEnvironment()
    ddp = DDPStrategy(
        None, ["cpu", "cpu"], environment, None, None, "gloo", timedelta(seconds=5), "spawn", static_graph=True
    )
    assert ddp.parallel_devices == [torch.device("cpu")] * 2
    assert ddp.cluster_environment is environment
    assert repr(ddp) == (
        "DDPStrategy(start_method='spawn', backend='gloo', timeout=0:00:05, ddp_kwargs={'static_graph': True})"
    )
    fsdp = FSDPStrategy(None, None, None, None, None, None, None, "fork", True)
    assert fsdp.state_dict_type == "sharded"
    assert fsdp._start_method == "fork"
    assert fsdp._cpu_offload is True


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: DDPStrategy(None, None, None, None, None, None, None, "popen", None), "positional"),
        (lambda: SingleDeviceStrategy(device="cpu", parallel_devices=None), "parallel_devices"),
        (lambda: DataParallelStrategy(None, None, None, None, None), "positional"),
    ],
)
def test_wrong_calls_are_refused(call: Callable[[], object], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        call()
