"""A litgpt-style pretraining loop as users write it: a tiny GPT sharded per block with FSDP on 2 processes,
``ThroughputMonitor``, gradient accumulation with ``fabric.no_backward_sync``, a checkpoint every few steps, and a
resume from the last checkpoint in fresh processes that ends with the weights of the uninterrupted run.
"""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional

from fabric_core import Fabric, ThroughputMonitor
from fabric_strategies import FSDPStrategy
from fabric_testing import run_processes

VOCAB, BLOCK_SIZE, EMBED, HEADS, LAYERS = 64, 16, 32, 2, 2
MICRO_BATCH, ACCUMULATE, MAX_ITERS, SAVE_EVERY, WARMUP = 2, 2, 6, 3, 2
pytestmark = pytest.mark.timeout(240)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm_1 = nn.LayerNorm(EMBED)
        self.attn = nn.Linear(EMBED, 3 * EMBED)
        self.proj = nn.Linear(EMBED, EMBED)
        self.norm_2 = nn.LayerNorm(EMBED)
        self.mlp = nn.Sequential(nn.Linear(EMBED, 4 * EMBED), nn.GELU(), nn.Linear(4 * EMBED, EMBED))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.attn(self.norm_1(x)).view(b, t, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
        y = functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.mlp(self.norm_2(x))


class GPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, EMBED)
        self.wpe = nn.Embedding(BLOCK_SIZE, EMBED)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(EMBED)
        self.lm_head = nn.Linear(EMBED, VOCAB, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def get_batch(iter_num: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The micro-batch of ``iter_num`` for ``rank``: a function of both, so a resumed run sees the same data."""
    generator = torch.Generator().manual_seed(10_000 * rank + iter_num)
    data = torch.randint(0, VOCAB, (MICRO_BATCH, BLOCK_SIZE + 1), generator=generator)
    return data[:, :-1], data[:, 1:]


def get_lr(step: int) -> float:
    if step < WARMUP:
        return 1e-2 * (step + 1) / WARMUP
    return 1e-3 + 0.5 * (1e-2 - 1e-3) * (1 + math.cos(math.pi * step / MAX_ITERS))


class Metrics:
    """A logger that keeps what it is given (the loop logs through ``ThroughputMonitor``)."""

    name, version = "memory", 0

    def __init__(self) -> None:
        self.logged: list[tuple[dict[str, float], int | None]] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.logged.append((dict(metrics), step))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None: ...

    def save(self) -> None: ...

    def finalize(self, status: str) -> None: ...


def _pretrain(rank: int, world_size: int, out_dir: str, resume: bool) -> dict[str, Any]:
    metrics = Metrics()
    strategy = FSDPStrategy(auto_wrap_policy={Block}, state_dict_type="full", timeout=timedelta(seconds=60))
    fabric = Fabric(accelerator="cpu", devices=world_size, strategy=strategy, loggers=metrics)
    fabric.launch()
    fabric.seed_everything(1337)
    with fabric.init_module(empty_init=True):
        model = GPT()
    model = fabric.setup(model)
    optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1))
    state: dict[str, Any] = {"model": model, "optimizer": optimizer, "iter_num": 0, "step_count": 0}
    if resume:
        last = max(Path(out_dir).glob("step-*.ckpt"), key=lambda p: int(p.stem.split("-")[1]))
        fabric.load(last, state)
    monitor = ThroughputMonitor(fabric, window_size=2)
    while state["step_count"] < MAX_ITERS:
        is_accumulating = (state["iter_num"] + 1) % ACCUMULATE != 0
        for group in optimizer.param_groups:
            group["lr"] = get_lr(state["step_count"])
        x, y = get_batch(state["iter_num"], rank)
        with fabric.no_backward_sync(model, enabled=is_accumulating):
            logits = model(x)
            loss = functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
            fabric.backward(loss / ACCUMULATE)
        state["iter_num"] += 1
        monitor.update(
            batches=state["iter_num"], samples=state["iter_num"] * MICRO_BATCH, lengths=state["iter_num"] * BLOCK_SIZE
        )
        if is_accumulating:
            continue
        fabric.clip_gradients(model, optimizer, max_norm=1.0)
        optimizer.step()
        optimizer.zero_grad()
        state["step_count"] += 1
        monitor.compute_and_log(step=state["step_count"], loss=loss.item())
        if state["step_count"] % SAVE_EVERY == 0:
            fabric.save(Path(out_dir) / f"step-{state['step_count']:04d}.ckpt", state)
    final = {key: value.detach().clone() for key, value in fabric.strategy.get_module_state_dict(model.module).items()}
    return {"final": final if rank == 0 else None, "logged": metrics.logged if rank == 0 else None}


def test_pretraining_loop_resumes_from_the_last_checkpoint(tmp_path: Path) -> None:
    full = tmp_path / "full"
    uninterrupted = run_processes(_pretrain, str(full), False, init_process_group=False, timeout=200)[0]
    assert sorted(p.name for p in full.iterdir()) == ["step-0003.ckpt", "step-0006.ckpt"]
    logged = uninterrupted["logged"]
    assert [step for _, step in logged] == list(range(1, MAX_ITERS + 1))
    # after the window fills, the monitor reports throughput across both processes
    assert logged[-1][0]["samples_per_sec"] > 0
    assert "device/samples_per_sec" in logged[-1][0]

    (full / "step-0006.ckpt").unlink()  # as if the run had stopped after step 3
    resumed = run_processes(_pretrain, str(full), True, init_process_group=False, timeout=200)[0]
    assert [step for _, step in resumed["logged"]] == list(range(SAVE_EVERY + 1, MAX_ITERS + 1))
    assert resumed["final"].keys() == uninterrupted["final"].keys()
    for key, value in uninterrupted["final"].items():
        torch.testing.assert_close(resumed["final"][key], value, rtol=0, atol=0, msg=key)
