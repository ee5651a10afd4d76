"""``torch.compile`` with ``Fabric.setup``: compiled models train under every strategy, are compiled again after the
strategy wraps them, and their checkpoints carry the model's own keys (no ``_orig_mod.``).

Most cases compile with a counting backend (dynamo's graphs run eagerly, no C++ compiler needed); one uses inductor.
Distributed cases run on 2 real gloo processes.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fabric_core import Fabric
from fabric_strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy
from fabric_testing import TinyMLP, run_processes

STEPS = 3
pytestmark = pytest.mark.timeout(300)


class CountingBackend:
    """A ``torch.compile`` backend that runs dynamo's graphs as they are and counts them."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: Any) -> Any:
        self.graphs += 1
        return graph.forward


class Blocks(nn.Module):
    """Two blocks FSDP can shard one by one."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([TinyMLP(8, 16, 8), TinyMLP(8, 16, 8)])
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def train(fabric: Fabric, model: nn.Module, rank: int = 0) -> tuple[list[float], Any]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    generator = torch.Generator().manual_seed(rank)
    losses = []
    for _ in range(STEPS):
        x = torch.randn(4, 8, generator=generator)
        loss = model(x).pow(2).mean()
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses, model


def full_weights(model: nn.Module) -> dict[str, list[Any]]:
    from torch.distributed.tensor import DTensor

    out = {}
    for name, value in model.state_dict().items():
        tensor = value.full_tensor() if isinstance(value, DTensor) else value
        out[name] = tensor.detach().cpu().tolist()
    return out


# -- one process ----------------------------------------------------------------------------------------------------
def test_compiled_model_trains_and_is_compiled_again_after_setup(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, backend = Blocks(), CountingBackend()
    reference = Blocks()
    reference.load_state_dict(model.state_dict())
    fabric = Fabric(accelerator="cpu", devices=1)
    compiled = torch.compile(model, backend=backend)
    losses, _ = train(fabric, compiled)
    assert backend.graphs > 0  # the forward ran through the user's compiler
    assert losses == train(Fabric(accelerator="cpu", devices=1), reference)[0]
    assert torch.equal(model.head.weight, reference.head.weight)

    fabric_model = fabric.setup_module(torch.compile(Blocks(), backend=backend))
    assert fabric_model.module.__class__ is Blocks  # the model itself, not torch's wrapper
    assert "_orig_mod" not in str(list(fabric_model.state_dict()))


@pytest.mark.parametrize("compile_first", [True, False], ids=["compile-then-setup", "setup-then-compile"])
def test_checkpoint_of_compiled_model_has_clean_keys(tmp_path: Path, compile_first: bool) -> None:
    fabric = Fabric(accelerator="cpu", devices=1)
    model = Blocks()
    if compile_first:
        fabric_model = fabric.setup(torch.compile(model, backend="eager"))
    else:
        fabric_model = torch.compile(fabric.setup(model), backend="eager")
    fabric_model(torch.randn(2, 8))
    fabric.save(tmp_path / "ckpt.pt", {"model": fabric_model})

    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)["model"]
    assert sorted(saved) == sorted(Blocks().state_dict())
    plain = Blocks()
    plain.load_state_dict(saved)  # strict: an uncompiled model takes it as it is
    assert torch.equal(plain.head.weight, model.head.weight)

    # and it loads into a compiled model, set up or not
    for target in (torch.compile(Blocks(), backend="eager"), fabric.setup(torch.compile(Blocks(), backend="eager"))):
        fabric.load(tmp_path / "ckpt.pt", {"model": target})
        assert torch.equal(target.head.weight, model.head.weight)


def test_plain_torch_checkpoint_of_compiled_blocks_loads_into_uncompiled_model(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu", devices=1)
    model = Blocks()
    model.blocks[0] = torch.compile(model.blocks[0], backend="eager")  # per-block compile, torchtitan style
    whole = torch.compile(model, backend="eager")
    torch.save(whole.state_dict(), tmp_path / "raw.pt")  # keys like "_orig_mod.blocks.0._orig_mod.layer1.weight"
    assert any(key.count("_orig_mod") == 2 for key in torch.load(tmp_path / "raw.pt", weights_only=True))

    plain = Blocks()
    fabric.load_raw(tmp_path / "raw.pt", plain)
    assert torch.equal(plain.blocks[0].layer1.weight, model.blocks[0].layer1.weight)

    fabric.save(tmp_path / "ckpt.pt", {"model": model})  # a model with a compiled block, not set up
    assert sorted(torch.load(tmp_path / "ckpt.pt", weights_only=True)["model"]) == sorted(plain.state_dict())
    fabric.load(tmp_path / "ckpt.pt", {"model": model})  # and back into it


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")
def test_inductor_compiled_model_trains() -> None:
    results = run_processes(_inductor_worker, world_size=1, init_process_group=False, timeout=240)
    compiled_losses, eager_losses = results[0]
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)


def _inductor_worker(rank: int, world_size: int) -> tuple[list[float], list[float]]:
    torch._inductor.config.compile_threads = 1  # no compile worker pool in the test process
    # trust the CPU's flags for the vector ISA instead of probing each ISA (a dry compile of a vectorized kernel per
    # ISA with g++, each loaded in a new Python process): the kernels are the same ones, compiled for real, ~7 s less
    torch._inductor.config.cpp.vec_isa_ok = True
    torch.manual_seed(0)
    model, reference = Blocks(), Blocks()
    reference.load_state_dict(model.state_dict())
    compiled, _ = train(Fabric(accelerator="cpu", devices=1), torch.compile(model, backend="inductor"))
    return compiled, train(Fabric(accelerator="cpu", devices=1), reference)[0]


# -- two processes --------------------------------------------------------------------------------------------------
def _strategy(name: str) -> Any:
    timeout = timedelta(seconds=60)
    if name == "ddp":
        return DDPStrategy(timeout=timeout)
    if name == "fsdp":
        return FSDPStrategy(auto_wrap_policy={TinyMLP}, timeout=timeout)
    return ModelParallelStrategy(parallelize_fn=_shard_blocks, data_parallel_size=2, timeout=timeout)


def _shard_blocks(model: nn.Module, mesh: Any) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block, mesh=mesh["data_parallel"])
    fully_shard(model, mesh=mesh["data_parallel"])
    return model


def _distributed_worker(rank: int, world_size: int, name: str, directory: str) -> dict[str, Any]:
    backend = CountingBackend()
    torch.manual_seed(0)
    fabric = Fabric(accelerator="cpu", devices=2, strategy=_strategy(name))
    fabric.launch()
    model = Blocks()
    compiled_losses, fabric_model = train(fabric, torch.compile(model, backend=backend), rank)
    torch.manual_seed(0)
    reference = Blocks()
    eager_losses, _ = train(fabric, reference, rank)
    path = Path(directory) / "ckpt"
    fabric.save(path, {"model": fabric_model})
    fresh = Blocks()
    fabric_fresh = fabric.setup(torch.compile(fresh, backend="eager")) if name != "ddp" else fresh
    fabric.load(path, {"model": fabric_fresh})
    return {
        "graphs": backend.graphs,
        # compiled around the strategy's wrapper, not inside it
        "compiled_inside": [type(m).__name__ for m in fabric_model.forward_module.modules() if hasattr(m, "_orig_mod")],
        "saved_keys": sorted(fabric_model.state_dict()),
        "losses": (compiled_losses, eager_losses),
        "weights": full_weights(model),
        "reference": full_weights(reference),
        "reloaded": full_weights(fresh),
    }


@pytest.mark.parametrize("name", ["ddp", "fsdp", "model_parallel"])
def test_compiled_model_under_distributed_strategy(tmp_path: Path, name: str) -> None:
    results = run_processes(_distributed_worker, name, str(tmp_path), init_process_group=False, timeout=240)
    for result in results:
        assert result["graphs"] > 0
        assert result["compiled_inside"] == []
        assert result["saved_keys"] == sorted(Blocks().state_dict())
        compiled_losses, eager_losses = result["losses"]
        assert compiled_losses == pytest.approx(eager_losses, rel=1e-5)
        assert sorted(result["weights"]) == sorted(Blocks().state_dict())  # clean keys
        assert _close(result["weights"], result["reference"])
        assert _close(result["reloaded"], result["weights"])
    assert _close(results[0]["weights"], results[1]["weights"])


def _close(first: dict[str, Any], second: dict[str, Any]) -> bool:
    return first.keys() == second.keys() and all(
        torch.allclose(torch.tensor(first[key]), torch.tensor(second[key]), atol=1e-6) for key in first
    )
