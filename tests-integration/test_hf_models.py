"""Hugging Face ``transformers`` causal LMs (tiny configs, nothing downloaded) trained with Fabric as users write it.

Each case builds the model inside ``fabric.init_module(empty_init=True)``, loads the same initial weights, trains a
few SGD steps on 2 real gloo processes (each on half of the global batch), saves, and checks the weights against
the same training in one plain PyTorch process. Sharded checkpoints are reloaded at another world size (1 process).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

from fabric_core import Fabric
from fabric_strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from fabric_testing import RunIf, preload_in_fork_server, run_processes

transformers = pytest.importorskip("transformers")
# every process builds these models: the fork server imports their code once (about 3 s of CPU per process)
preload_in_fork_server("transformers.models.llama.modeling_llama", "transformers.models.gpt2.modeling_gpt2")

STEPS = 3
BATCH, SEQUENCE = 4, 16
TIMEOUT = timedelta(seconds=60)
pytestmark = pytest.mark.timeout(240)


def build(name: str) -> torch.nn.Module:
    if name == "llama":
        config = transformers.LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=128,
        )
        return transformers.LlamaForCausalLM(config)
    config = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=128, n_positions=SEQUENCE, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0
    )  # no dropout: the runs must do the same arithmetic
    return transformers.GPT2LMHeadModel(config)


def batch(step: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    tokens = torch.randint(0, 128, (BATCH, SEQUENCE), generator=torch.Generator().manual_seed(100 + step))
    size = BATCH // world_size
    return tokens[rank * size : (rank + 1) * size]


def reference(name: str, initial: Path) -> dict[str, torch.Tensor]:
    """One plain process on the whole batch: what data parallelism must match."""
    model = build(name)
    model.load_state_dict(torch.load(initial, weights_only=True))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(STEPS):
        tokens = batch(step)
        model(input_ids=tokens, labels=tokens).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def strategy(kind: str, name: str) -> Any:
    if kind == "ddp":
        return DDPStrategy(timeout=TIMEOUT)
    if kind == "fsdp":
        # llama: the decoder layers are chosen from the model's _no_split_modules; gpt2: named by the user
        policy = None if name == "llama" else {transformers.models.gpt2.modeling_gpt2.GPT2Block}
        return FSDPStrategy(auto_wrap_policy=policy, timeout=TIMEOUT)
    if kind.startswith("deepspeed"):
        return DeepSpeedStrategy(stage=int(kind[-1]), timeout=TIMEOUT)
    return ModelParallelStrategy(parallelize_fn=tensor_parallel, data_parallel_size=1, timeout=TIMEOUT)


def tensor_parallel(model: torch.nn.Module, mesh: Any) -> torch.nn.Module:
    """Megatron-style split of each Llama decoder layer over the tensor-parallel dimension."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    plan = {
        "self_attn.q_proj": ColwiseParallel(),
        "self_attn.k_proj": ColwiseParallel(),
        "self_attn.v_proj": ColwiseParallel(),
        "self_attn.o_proj": RowwiseParallel(),
        "mlp.gate_proj": ColwiseParallel(),
        "mlp.up_proj": ColwiseParallel(),
        "mlp.down_proj": RowwiseParallel(),
    }
    for layer in model.model.layers:
        parallelize_module(layer, mesh["tensor_parallel"], plan)
    return model


def full_state(fabric: Fabric, model: Any) -> dict[str, torch.Tensor]:
    from torch.distributed.tensor import DTensor

    state = fabric.strategy.get_module_state_dict(model.module) if hasattr(model, "module") else model.state_dict()
    return {
        key: (value.full_tensor() if isinstance(value, DTensor) else value).detach().float().clone()
        for key, value in state.items()
    }


def _train(rank: int, world_size: int, name: str, kind: str, directory: str) -> dict[str, Any]:
    fabric = Fabric(accelerator="cpu", devices=world_size, strategy=strategy(kind, name))
    fabric.launch()
    build(name)  # transformers imports the model's module on first use: not inside DeepSpeed's zero.Init
    # ZeRO-3 trains from the weights made inside zero.Init (partitioned as they are made), so they are initialised
    with fabric.init_module(empty_init=kind != "deepspeed3"):
        model = build(name)
    on_meta = any(p.is_meta for p in model.parameters())
    initial = None
    if kind == "deepspeed3":  # ZeRO-3 partitions the weights as they are made: train from those, gathered
        model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.5))
        initial = full_state(fabric, model)
    elif kind.startswith("deepspeed"):
        # ZeRO keeps fp32 master copies made at setup: the weights are loaded before it, with the optimizer
        fabric.load_raw(Path(directory) / "initial.pt", model)
        model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.5))
    else:  # FSDP: the optimizer is made from the sharded parameters
        model = fabric.setup_module(model)
        fabric.load_raw(Path(directory) / "initial.pt", model)
        optimizer = fabric.setup_optimizers(torch.optim.SGD(model.parameters(), lr=0.5))
    # buffers that are not in the state dict (rotary frequencies) must hold their values after meta-device init
    buffers = dict(model.module.named_buffers())
    buffers_ok = all(torch.equal(buffers[key], value) for key, value in build(name).named_buffers())
    per_layer = kind == "fsdp" and all(
        type(layer).__name__.startswith("FSDP")
        for layer in (model.module.model.layers if name == "llama" else model.module.transformer.h)
    )
    for step in range(STEPS):
        tokens = batch(step, rank if kind != "model_parallel" else 0, world_size if kind != "model_parallel" else 1)
        loss = model(input_ids=tokens, labels=tokens).loss
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    fabric.save(Path(directory) / "trained", {"model": model, "optimizer": optimizer, "step": STEPS})
    weights = full_state(fabric, model)
    return {
        "on_meta": on_meta,
        "per_layer": per_layer,
        "buffers_ok": buffers_ok,
        "weights": weights,
        "initial": initial,
    }


def _reload(rank: int, world_size: int, name: str, kind: str, directory: str) -> dict[str, Any]:
    """The checkpoint of 2 processes, loaded by 1 (sharded formats: with the strategy that wrote them)."""
    single = {"ddp": "auto", "fsdp": FSDPStrategy(timeout=TIMEOUT)}.get(kind, strategy(kind, name))
    fabric = Fabric(accelerator="cpu", devices=1, strategy=single)
    fabric.launch()
    model = fabric.setup_module(build(name))
    optimizer = fabric.setup_optimizers(torch.optim.SGD(model.parameters(), lr=0.5))
    remainder = fabric.load(Path(directory) / "trained", {"model": model, "optimizer": optimizer})
    return {"weights": full_state(fabric, model), "remainder": remainder}


def check(name: str, kind: str, tmp_path: Path, reload: bool = True) -> None:
    torch.manual_seed(0)
    torch.save(build(name).state_dict(), tmp_path / "initial.pt")
    results = run_processes(_train, name, kind, str(tmp_path), init_process_group=False, timeout=200)
    if results[0]["initial"] is not None:  # the run made its own initial weights
        torch.save(results[0]["initial"], tmp_path / "initial.pt")
    expected = reference(name, tmp_path / "initial.pt")
    for result in results:
        assert result["buffers_ok"]
        assert set(result["weights"]) == set(expected), "checkpoint keys differ from the model's"
        for key, value in expected.items():
            torch.testing.assert_close(result["weights"][key], value.float(), atol=2e-5, rtol=1e-4, msg=key)
    if kind in ("ddp", "fsdp"):
        assert results[0]["on_meta"] == (kind == "fsdp")
    if kind == "fsdp":
        assert results[0]["per_layer"]
    if reload:
        [reloaded] = run_processes(_reload, name, kind, str(tmp_path), world_size=1, init_process_group=False)
        assert reloaded["remainder"] == {"step": STEPS}
        for key, value in expected.items():
            torch.testing.assert_close(reloaded["weights"][key], value.float(), atol=2e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_hf_causal_lm_data_parallel(tmp_path: Path, name: str, kind: str) -> None:
    check(name, kind, tmp_path)


@RunIf(deepspeed=True)
@pytest.mark.parametrize("kind", ["deepspeed2", "deepspeed3"])
def test_hf_causal_lm_deepspeed(tmp_path: Path, kind: str) -> None:
    check("llama", kind, tmp_path, reload=False)


def test_hf_llama_tensor_parallel(tmp_path: Path) -> None:
    check("llama", "model_parallel", tmp_path, reload=False)
