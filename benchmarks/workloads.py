"""The benchmarked models, their data, and each training loop written twice: in raw PyTorch and with fabric.

Both versions of a loop do the same arithmetic in the same order (same seeds, same data order, same optimizer), so
their final weights must be bit-identical; the only difference is the code that fabric adds around it. Each loop
records a time stamp after every optimizer step; the harness turns those into per-step times.

The peers (Lightning Fabric, HF Accelerate; optional, see ``PEERS``) run the same loop written the way their own
documentation tells users to write it; their weights are compared with raw's as measured, not required to match.
"""

from __future__ import annotations

import hashlib
import math
import os
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812 - the usual spelling
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

Impl = Literal["raw", "fabric", "lightning", "accelerate"]
#: the optional peers: impl -> (the distribution that provides it, how the tables name it)
PEERS: dict[str, tuple[str, str]] = {
    "lightning": ("lightning", "Lightning Fabric"),
    "accelerate": ("accelerate", "HF Accelerate"),
}
PRECISIONS = ("32-true", "bf16-mixed")
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


# -- models ------------------------------------------------------------------------------------------------------
def tiny_mlp() -> nn.Module:
    """A few thousand parameters: a step costs tens of microseconds, so per-step overhead dominates."""
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def small_convnet() -> nn.Module:
    """A small CIFAR-style convnet: compute dominates, overhead should vanish in the noise."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        shape = (batch, length, self.heads, width // self.heads)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """A GPT-2-style decoder (learned positions, pre-norm blocks, tied embedding/head)."""

    def __init__(self, *, vocab: int, length: int, width: int, depth: int, heads: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(length, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.tokens.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tokens(idx) + self.positions(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


# -- workloads ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Workload:
    name: str
    description: str
    build_model: Callable[[], nn.Module]
    make_data: Callable[[], TensorDataset]
    batch_size: int
    chunk: int  # steps per measured chunk (the two sides take turns chunk by chunk)
    chunks: int  # measured chunks in a full run (after the warmup chunk)
    quick_chunks: int
    warmup: int
    language_model: bool = False  # loss over next-token logits; throughput in tokens/s


def _classification_data(samples: int, shape: tuple[int, ...]) -> TensorDataset:
    generator = torch.Generator().manual_seed(1234)
    inputs = torch.randn(samples, *shape, generator=generator)
    targets = torch.randint(0, 10, (samples,), generator=generator)
    return TensorDataset(inputs, targets)


def _token_data(samples: int, length: int, vocab: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(1234)
    return TensorDataset(torch.randint(0, vocab, (samples, length + 1), generator=generator))


GPT_CUDA = {"vocab": 32768, "length": 1024, "width": 1024, "depth": 24, "heads": 16}
GPT_TINY = {"vocab": 512, "length": 64, "width": 64, "depth": 2, "heads": 4}

WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            name="mlp",
            description="tiny MLP 32-64-64-10 (7k params), batch 16, Adam",
            build_model=tiny_mlp,
            make_data=lambda: _classification_data(4096, (32,)),
            batch_size=16,
            chunk=100,
            chunks=16,
            quick_chunks=6,
            warmup=100,
        ),
        Workload(
            name="convnet",
            description="convnet 2x conv3x3 + 2 linear (0.14M params), 3x32x32 inputs, batch 32, Adam",
            build_model=small_convnet,
            make_data=lambda: _classification_data(2048, (3, 32, 32)),
            batch_size=32,
            chunk=4,
            chunks=30,
            quick_chunks=10,
            warmup=8,
        ),
        Workload(
            name="gpt-tiny",
            description="GPT, 2 layers x 64 wide, 64 tokens, batch 4 (CPU smoke test of the GPT loop)",
            build_model=lambda: GPT(**GPT_TINY),
            make_data=lambda: _token_data(512, GPT_TINY["length"], GPT_TINY["vocab"]),
            batch_size=4,
            chunk=5,
            chunks=12,
            quick_chunks=4,
            warmup=5,
            language_model=True,
        ),
        Workload(
            name="gpt",
            description="GPT-2-medium-sized (24 layers x 1024, 16 heads, 1024 tokens, vocab 32k), batch 16, AdamW",
            build_model=lambda: GPT(**GPT_CUDA),
            make_data=lambda: _token_data(16 * 80, GPT_CUDA["length"], GPT_CUDA["vocab"]),
            batch_size=16,
            chunk=10,
            chunks=8,
            quick_chunks=3,
            warmup=5,
            language_model=True,
        ),
    )
}


@dataclass(frozen=True, kw_only=True)
class Trial:
    """One process's share of a benchmark run (serialised to JSON on the child's command line)."""

    workload: str
    impl: Impl
    precision: str
    world_size: int
    chunks: int
    device: str = "cpu"
    threads: int = 1
    weights_path: str = ""  # where rank 0 saves its final state_dict (for the harness's max-abs-diff check)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- shared pieces -----------------------------------------------------------------------------------------------
def _optimizer(workload: Workload, model: nn.Module) -> torch.optim.Optimizer:
    if workload.language_model:
        return torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    return torch.optim.Adam(model.parameters(), lr=1e-3)


def _loss(workload: Workload, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if workload.language_model:
        return F.cross_entropy(output.view(-1, output.shape[-1]), target.reshape(-1))
    return F.cross_entropy(output, target)


def _split(workload: Workload, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if workload.language_model:
        (tokens,) = batch
        return tokens[:, :-1], tokens[:, 1:]
    return batch[0], batch[1]


def weights_digest(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer, bit for bit (names and dtypes included)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Meter:
    """Times the steps of a loop that the harness pauses between chunks (pauses are not counted).

    On the CPU every step is timed (wall and process CPU time); on CUDA only whole chunks, after a synchronize, so
    that the GPU's queue is not drained at every step.
    """

    def __init__(self, trial: Trial, device: torch.device, handshake: Callable[[str], None]) -> None:
        workload = WORKLOADS[trial.workload]
        self.chunk = workload.chunk
        self.total = workload.warmup + trial.chunks * workload.chunk
        self.warmup = workload.warmup
        self.device = device
        self.handshake = handshake
        self.done = 0
        self.chunk_wall: list[list[float]] = []  # per measured chunk: the step times (CPU) or one mean (CUDA)
        self.chunk_cpu: list[list[float]] = []
        self._wall = self._cpu = 0.0
        self._chunk_start = 0.0

    def start(self) -> None:
        """Set-up is over: wait for the harness's first go."""
        self.handshake("ready")
        self._resume()

    def _resume(self) -> None:
        self.chunk_wall.append([])
        self.chunk_cpu.append([])
        self._chunk_start = self._wall = time.perf_counter()
        self._cpu = time.process_time()

    def step(self) -> bool:
        """Record the step that just ended; pause at a chunk boundary. False once every step has run."""
        self.done += 1
        if self.device.type == "cpu":
            now, cpu = time.perf_counter(), time.process_time()
            self.chunk_wall[-1].append(now - self._wall)
            self.chunk_cpu[-1].append(cpu - self._cpu)
            self._wall, self._cpu = now, cpu
        boundary = self.done == self.warmup or (self.done > self.warmup and (self.done - self.warmup) % self.chunk == 0)
        if boundary:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                steps = self.warmup if self.done == self.warmup else self.chunk
                self.chunk_wall[-1].append((time.perf_counter() - self._chunk_start) / steps)
            if self.done == self.warmup:  # the warmup chunk is not a measurement
                self.chunk_wall.pop()
                self.chunk_cpu.pop()
            if self.done >= self.total:
                return False
            self.handshake("done")
            self._resume()
        return True


def _summary(trial: Trial, workload: Workload, meter: Meter, model: nn.Module) -> dict[str, Any]:
    """Per-chunk step times, peak memory and the digest of the final weights."""
    result: dict[str, Any] = {
        "trial": trial.to_dict(),
        "chunk_step_s": [_median(c) for c in meter.chunk_wall],
        "chunk_cpu_s": [_median(c) for c in meter.chunk_cpu],
        "steps_s": [[round(t, 9) for t in c] for c in meter.chunk_wall],
        "steps_cpu_s": [[round(t, 9) for t in c] for c in meter.chunk_cpu],
        "step_median_s": _median([t for c in meter.chunk_wall for t in c]),
        "step_cpu_median_s": _median([t for c in meter.chunk_cpu for t in c]),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "digest": weights_digest(model),
        "torch_threads": torch.get_num_threads(),
    }
    if trial.weights_path and int(os.environ.get("RANK", "0")) == 0:
        torch.save({k: v.detach().to("cpu") for k, v in model.state_dict().items()}, trial.weights_path)
    if workload.language_model:
        tokens = workload.batch_size * model.positions.weight.shape[0] * trial.world_size  # type: ignore[union-attr]
        result["tokens_per_s"] = tokens / result["step_median_s"]
    if meter.device.type == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(meter.device) / 2**20
    return result


def max_abs_diff(path_a: str, path_b: str) -> float:
    """The largest absolute difference between two saved state_dicts (inf if their names or shapes differ)."""
    a, b = torch.load(path_a, weights_only=True), torch.load(path_b, weights_only=True)
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return math.inf
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


# -- raw PyTorch -------------------------------------------------------------------------------------------------
def run_raw(trial: Trial, handshake: Callable[[str], None]) -> dict[str, Any]:
    workload = WORKLOADS[trial.workload]
    distributed = trial.world_size > 1
    rank = int(os.environ.get("RANK", "0"))
    if trial.device == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if distributed:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.manual_seed(0)
    model = workload.build_model().to(device)
    optimizer = _optimizer(workload, model)
    forward_model: nn.Module = DistributedDataParallel(model) if distributed else model
    dataset = workload.make_data()
    sampler = DistributedSampler(dataset, num_replicas=trial.world_size, rank=rank, seed=0) if distributed else None
    loader = DataLoader(dataset, batch_size=workload.batch_size, shuffle=sampler is None, sampler=sampler)
    autocast_dtype = AUTOCAST_DTYPES.get(trial.precision)
    meter = Meter(trial, device, handshake)
    meter.start()
    running, epoch = True, 0
    while running:
        if sampler is not None:
            sampler.set_epoch(epoch)
        for batch in loader:
            inputs, targets = _split(workload, batch)
            if device.type != "cpu":
                inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad()
            if autocast_dtype is None:
                output = forward_model(inputs)
            else:
                with torch.autocast(device.type, dtype=autocast_dtype):
                    output = forward_model(inputs)
                output = output.float()
            loss = _loss(workload, output, targets)
            loss.backward()
            optimizer.step()
            running = meter.step()
            if not running:
                break
        epoch += 1
    result = _summary(trial, workload, meter, model)
    if distributed:
        torch.distributed.destroy_process_group()
    return result


def _train(
    workload: Workload, meter: Meter, loader: Any, model: Any, optimizer: Any, backward: Callable[[Any], Any]
) -> None:
    """The loop of fabric and the peers, their own wrappers in hand (``backward``: ``fabric.backward``, ...)."""
    meter.start()
    running = True
    while running:
        for batch in loader:
            inputs, targets = _split(workload, batch)
            optimizer.zero_grad()
            output = model(inputs)
            loss = _loss(workload, output, targets)
            backward(loss)
            optimizer.step()
            running = meter.step()
            if not running:
                break


# -- fabric and Lightning Fabric -------------------------------------------------------------------------------
def run_fabric(trial: Trial, handshake: Callable[[str], None]) -> dict[str, Any]:
    from fabric_core import Fabric

    return _run_fabric_api(Fabric, trial, handshake)


def run_lightning(trial: Trial, handshake: Callable[[str], None]) -> dict[str, Any]:
    """Lightning Fabric: the same loop, which is what its docs show (``setup``, ``setup_dataloaders``, ``backward``)."""
    from lightning.fabric import Fabric

    return _run_fabric_api(Fabric, trial, handshake)


def _run_fabric_api(fabric_class: Any, trial: Trial, handshake: Callable[[str], None]) -> dict[str, Any]:
    workload = WORKLOADS[trial.workload]
    fabric = fabric_class(
        accelerator=trial.device,
        devices=trial.world_size,
        strategy="ddp" if trial.world_size > 1 else "auto",
        precision=trial.precision,
    )
    fabric.launch()
    torch.manual_seed(0)
    model = workload.build_model()
    optimizer = _optimizer(workload, model)
    model, optimizer = fabric.setup(model, optimizer)
    loader = fabric.setup_dataloaders(DataLoader(workload.make_data(), batch_size=workload.batch_size, shuffle=True))
    meter = Meter(trial, fabric.device, handshake)
    _train(workload, meter, loader, model, optimizer, fabric.backward)
    result = _summary(trial, workload, meter, model.module)
    fabric.strategy.teardown()
    return result


# -- HF Accelerate -----------------------------------------------------------------------------------------------
ACCELERATE_PRECISION = {"32-true": "no", "bf16-mixed": "bf16", "16-mixed": "fp16"}


def run_accelerate(trial: Trial, handshake: Callable[[str], None]) -> dict[str, Any]:
    """HF Accelerate as its docs show: ``Accelerator(mixed_precision=...)``, ``prepare``, ``accelerator.backward``.

    Under DDP the harness starts the ranks with torchrun's variables, as ``accelerate launch`` would; on the CPU
    Accelerate then joins a gloo group (the backend is recorded in the result).
    """
    from accelerate import Accelerator

    workload = WORKLOADS[trial.workload]
    accelerator = Accelerator(cpu=trial.device == "cpu", mixed_precision=ACCELERATE_PRECISION[trial.precision])
    torch.manual_seed(0)
    model = workload.build_model()
    optimizer = _optimizer(workload, model)
    loader = DataLoader(workload.make_data(), batch_size=workload.batch_size, shuffle=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    meter = Meter(trial, accelerator.device, handshake)
    _train(workload, meter, loader, model, optimizer, accelerator.backward)
    result = _summary(trial, workload, meter, accelerator.unwrap_model(model))
    result["backend"] = accelerator.state.backend
    accelerator.end_training()
    return result


RUNNERS: dict[str, Callable[[Trial, Callable[[str], None]], dict[str, Any]]] = {
    "raw": run_raw,
    "fabric": run_fabric,
    "lightning": run_lightning,
    "accelerate": run_accelerate,
}
