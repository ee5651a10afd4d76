"""What ``Fabric`` refuses at construction and in ``setup``: inputs that used to be accepted silently.

Each mistake raises a ``ValueError``/``TypeError`` naming the value, before anything is built or wrapped; the
legitimate neighbours of each mistake still work.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from fabric_core import Fabric, FabricModule, FabricOptimizer, is_wrapped
from fabric_loggers import CSVLogger
from fabric_strategies import FSDPStrategy
from fabric_testing import TinyMLP, run_processes


# -- an optimizer over parameters of another model ----------------------------------------------------------------
def test_an_optimizer_over_another_models_parameters_is_refused_before_wrapping() -> None:
    fabric = Fabric(accelerator="cpu")
    model, other = TinyMLP(), TinyMLP()
    foreign = torch.optim.SGD(other.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"optimizer 0 \(SGD\) updates 4 of its 4 parameters that are not") as info:
        fabric.setup(model, foreign)
    assert "TinyMLP being set up" in str(info.value)
    assert "model.parameters()" in str(info.value)
    assert not is_wrapped(model)
    assert not is_wrapped(foreign)
    # nothing was set up: the same objects can still be set up correctly
    wrapped_model, wrapped_optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert isinstance(wrapped_model, FabricModule)
    assert isinstance(wrapped_optimizer, FabricOptimizer)


def test_the_message_counts_only_the_foreign_parameters_and_names_the_position() -> None:
    fabric = Fabric(accelerator="cpu")
    model = TinyMLP()
    extra = nn.Parameter(torch.zeros(3))  # e.g. a learned temperature that is no part of the model
    good = torch.optim.SGD(model.parameters(), lr=0.1)
    mixed = torch.optim.Adam([{"params": model.parameters()}, {"params": [extra], "lr": 1.0}])
    with pytest.raises(ValueError, match=r"optimizer 1 \(Adam\) updates 1 of its 5 parameters"):
        fabric.setup(model, good, mixed)


def test_legitimate_optimizers_are_accepted() -> None:
    """Several optimizers, a subset of the parameters, frozen parameters, a parameter shared by two layers."""
    fabric = Fabric(accelerator="cpu")
    shared = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    shared[1].weight = shared[0].weight  # tied
    shared[0].bias.requires_grad_(False)  # frozen
    first = torch.optim.SGD([shared[0].weight], lr=0.1)  # a subset
    second = torch.optim.Adam([shared[1].weight, shared[1].bias, shared[0].bias])  # the tied one again, the frozen one
    wrapped, *optimizers = fabric.setup(shared, first, second)
    assert len(optimizers) == 2
    fabric.backward(wrapped(torch.ones(2, 4)).sum())
    for optimizer in optimizers:
        optimizer.step()


def _fsdp_setup(rank: int, world_size: int) -> dict[str, Any]:
    fabric = Fabric(accelerator="cpu", devices=world_size, strategy=FSDPStrategy(timeout=timedelta(seconds=60)))
    fabric.launch()
    model, other = TinyMLP(), TinyMLP()
    try:
        fabric.setup(model, torch.optim.SGD(other.parameters(), lr=0.1))
        message = None
    except ValueError as err:
        message = str(err)
    untouched = not any(isinstance(p, DTensor) for p in model.parameters())
    # the same model and a correct optimizer still set up (and train) after the refusal
    wrapped, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    fabric.backward(wrapped(torch.ones(2, 32)).sum())
    optimizer.step()
    sharded = all(isinstance(p, DTensor) for p in model.parameters())
    return {"message": message, "untouched": untouched, "sharded": sharded}


def test_fsdp_refuses_a_foreign_optimizer_on_every_rank_before_sharding() -> None:
    for result in run_processes(_fsdp_setup, init_process_group=False):
        assert result["message"] is not None
        assert "optimizer 0 (SGD) updates 4 of its 4 parameters" in result["message"]
        assert result["untouched"]
        assert result["sharded"]


def test_the_same_optimizer_twice_in_one_call_is_refused() -> None:
    fabric = Fabric(accelerator="cpu")
    model = TinyMLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="The SGD optimizer is passed twice"):
        fabric.setup(model, optimizer, optimizer)
    with pytest.raises(ValueError, match="The SGD optimizer is passed twice"):
        fabric.setup_optimizers(optimizer, optimizer)


def test_setup_optimizers_refuses_parameters_that_setting_up_replaced() -> None:
    """An optimizer created before `setup_module` from parameters that set-up replaced would update orphans."""
    fabric = Fabric(accelerator="cpu", precision="bf16-true")
    model = nn.Sequential(nn.Linear(4, 4))
    stale = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.__future__.set_overwrite_module_params_on_conversion(True)  # `.to(dtype)` then makes new parameters
    try:
        wrapped = fabric.setup_module(model)
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(False)
    assert all(p.dtype == torch.bfloat16 for p in wrapped.parameters())
    with pytest.raises(ValueError, match=r"optimizer 0 \(SGD\) updates 2 of its 2 parameters that setting up the"):
        fabric.setup_optimizers(stale)
    fresh = fabric.setup_optimizers(torch.optim.SGD(wrapped.parameters(), lr=0.1))
    assert isinstance(fresh, FabricOptimizer)


def test_setup_optimizers_still_takes_optimizers_of_models_it_did_not_set_up() -> None:
    """e.g. MAML (examples/maml.py): a model moved with `to_device` whose gradients the loop reduces itself."""
    fabric = Fabric(accelerator="cpu")
    model = fabric.to_device(TinyMLP())
    assert isinstance(fabric.setup_optimizers(torch.optim.Adam(model.parameters())), FabricOptimizer)


# -- callbacks= and loggers= ----------------------------------------------------------------------------------------
class _Callback:
    def on_train_start(self) -> None: ...


@pytest.mark.parametrize(
    ("callbacks", "error", "shown"),
    [
        (5, TypeError, "callbacks=5 (int) is not a callback"),
        ("abc", TypeError, "callbacks='abc' (str) is not a callback"),
        (b"abc", TypeError, "callbacks=b'abc' (bytes) is not a callback"),
        (2.5, TypeError, "callbacks=2.5 (float)"),
        (True, TypeError, "callbacks=True (bool)"),
        ({"cb": _Callback()}, TypeError, "(dict) is not a callback"),
        ({_Callback()}, TypeError, "(set) is not a callback"),
        (iter([_Callback()]), TypeError, "(list_iterator) is not a callback"),
        ([_Callback(), None], TypeError, "callbacks[1]=None (NoneType) is not a callback"),
        ([_Callback(), "x"], TypeError, "callbacks[1]='x' (str)"),
        ([[_Callback()]], TypeError, "callbacks[0]=[<"),
        (_Callback, TypeError, "callbacks=_Callback is a class: pass an instance, e.g. callbacks=[_Callback()]"),
        ((_Callback(), _Callback), TypeError, "callbacks[1]=_Callback is a class"),
    ],
)
def test_bad_callbacks_are_refused(callbacks: object, error: type[Exception], shown: str) -> None:
    with pytest.raises(error, match=re.escape(shown)) as info:
        Fabric(accelerator="cpu", callbacks=callbacks)
    assert "a list or tuple of them" in str(info.value) or "is a class" in str(info.value)


def test_good_callbacks_are_kept() -> None:
    one, two = _Callback(), _Callback()
    assert Fabric(accelerator="cpu", callbacks=one)._callbacks[0] is one
    assert Fabric(accelerator="cpu", callbacks=(one, two))._callbacks[:2] == [one, two]


def test_bad_loggers_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"loggers=CSVLogger is a class: pass an instance"):
        Fabric(accelerator="cpu", loggers=CSVLogger)
    logger = CSVLogger(tmp_path)
    with pytest.raises(ValueError, match="holds the same logger twice"):
        Fabric(accelerator="cpu", loggers=[logger, logger])
    with pytest.raises(TypeError, match="'abc' is not a logger"):
        Fabric(accelerator="cpu", loggers="abc")
    with pytest.raises(TypeError, match="None is not a logger"):
        Fabric(accelerator="cpu", loggers=[logger, None])
    assert Fabric(accelerator="cpu", loggers=(logger,)).logger is logger


# -- inconsistent launcher variables -------------------------------------------------------------------------------
_TORCHRUN = {"MASTER_ADDR": "127.0.0.1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0"}


def test_inconsistent_torchelastic_ranks_are_refused_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**_TORCHRUN, "MASTER_PORT": "29500", "RANK": "7", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=re.escape("RANK=7 must satisfy 0 <= RANK < WORLD_SIZE=2")):
        Fabric(accelerator="cpu", devices=2, strategy="ddp")


def test_a_node_rank_outside_num_nodes_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_RANK", "2")
    with pytest.raises(ValueError, match=re.escape("NODE_RANK=2 must satisfy 0 <= NODE_RANK < num_nodes=2")):
        Fabric(accelerator="cpu", devices=1, num_nodes=2, strategy="ddp")


def test_a_script_with_inconsistent_torchrun_variables_exits_quickly_with_the_message(tmp_path: Path) -> None:
    """Before the check, this process waited in the rendezvous for a world of 2 that rank 7 can never join."""
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            from fabric_core import Fabric

            fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
            fabric.launch()
            print("joined the process group", flush=True)
            """
        )
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = {**os.environ, **_TORCHRUN, "MASTER_PORT": port, "RANK": "7", "WORLD_SIZE": "2"}
    try:
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"the script hung instead of failing: {err.stderr!r}") from None
    assert result.returncode != 0
    assert "RANK=7 must satisfy 0 <= RANK < WORLD_SIZE=2" in result.stderr
    assert "joined the process group" not in result.stdout
