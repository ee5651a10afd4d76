"""Train a small transformer language model on a generated corpus, with fabric and a throughput monitor.

The corpus is written here (nothing is downloaded) by a tiny English grammar: sentences such as "the old cat
chases two birds near the house ." in which the verb agrees with its subject (the cat chases, the cats chase), so
there is structure for the model to pick up. A 2-layer causal transformer learns to predict the next word.
``ThroughputMonitor`` logs tokens/s (and, on GPUs whose peak FLOPs are known, MFU from ``measure_flops``) through a
``CSVLogger`` and a ``TensorBoardLogger`` (``fabric-loggers``) to ``--log-dir``, where rank zero also draws the loss
curves as a PNG at the end (``pip install -r examples/requirements.txt``). ``fabric.progress`` shows the steps.

Run on one process:                 python examples/language_model.py
Run on 2 CPU processes with DDP:    fabric run --accelerator cpu --devices 2 examples/language_model.py
Short run (for CI):                 add --fast
"""

from __future__ import annotations

import argparse
import math
import random

import torch
from _pictures import finish, make_loggers
from torch import nn
from torch.nn.functional import cross_entropy
from torch.utils.data import DataLoader, TensorDataset

from fabric_core import Fabric, ThroughputMonitor, measure_flops

NOUNS = {"cat": "cats", "dog": "dogs", "bird": "birds", "child": "children", "teacher": "teachers", "fox": "foxes"}
VERBS = {"sees": "see", "likes": "like", "chases": "chase", "feeds": "feed", "follows": "follow", "hears": "hear"}
ADJECTIVES = ("small", "big", "happy", "old", "quiet", "clever")
PLACES = ("in the garden", "near the house", "by the river", "at night", "after school")


def noun_phrase(rng: random.Random) -> tuple[list[str], bool]:
    """Words of a noun phrase and whether it is plural."""
    plural = rng.random() < 0.5
    noun = rng.choice(list(NOUNS))
    determiner = rng.choice(("the", "some", "two", "three") if plural else ("the", "a", "my", "one"))
    adjective = [rng.choice(ADJECTIVES)] if rng.random() < 0.4 else []
    return [determiner, *adjective, NOUNS[noun] if plural else noun], plural


def sentence(rng: random.Random) -> list[str]:
    subject, plural = noun_phrase(rng)
    verb = rng.choice(list(VERBS))
    obj, _ = noun_phrase(rng)
    place = rng.choice(PLACES).split() if rng.random() < 0.3 else []
    return [*subject, VERBS[verb] if plural else verb, *obj, *place, "."]


def corpus(words: int, seed: int) -> list[str]:
    """At least ``words`` words of generated sentences (the same on every process for the same seed)."""
    rng = random.Random(seed)
    text: list[str] = []
    while len(text) < words:
        text.extend(sentence(rng))
    return text


def vocabulary() -> list[str]:
    """Every word the grammar can produce, in a fixed order."""
    words = {".", "the", "some", "two", "three", "a", "my", "one", *ADJECTIVES, *NOUNS, *NOUNS.values()}
    words |= {*VERBS, *VERBS.values(), *(w for place in PLACES for w in place.split())}
    return sorted(words)


def windows(tokens: torch.Tensor, context: int) -> TensorDataset:
    """Non-overlapping windows of ``context`` inputs and their next-token targets."""
    count = (tokens.numel() - 1) // context
    inputs = tokens[: count * context].view(count, context)
    targets = tokens[1 : count * context + 1].view(count, context)
    return TensorDataset(inputs, targets)


class TinyTransformerLM(nn.Module):
    def __init__(self, vocab_size: int, context: int, width: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, width)
        self.positions = nn.Embedding(context, width)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.size(1)
        positions = torch.arange(length, device=tokens.device)
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        hidden = self.blocks(self.tokens(tokens) + self.positions(positions), mask=mask, is_causal=True)
        return self.head(self.norm(hidden))


def validation_loss(fabric: Fabric, model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    totals = torch.zeros(2, device=fabric.device)
    with torch.no_grad():
        for inputs, targets in loader:
            logits = model(inputs)
            totals[0] += cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
            totals[1] += targets.numel()
    model.train()
    totals = fabric.all_reduce(totals, reduce_op="sum")
    return (totals[0] / totals[1]).item()


def generate(model: nn.Module, prompt: list[int], steps: int, context: int, device: torch.device) -> list[int]:
    """Greedy continuation of ``prompt``."""
    tokens = list(prompt)
    model.eval()
    with torch.no_grad():
        for _ in range(steps):
            window = torch.tensor([tokens[-context:]], device=device)
            tokens.append(int(model(window)[0, -1].argmax()))
    model.train()
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a short run (a few seconds of training)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--words", type=int, default=None, help="size of the generated training corpus")
    parser.add_argument("--context", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--log-dir", default="fabric_logs", help="metrics (CSV, TensorBoard) and pictures go here")
    args = parser.parse_args()
    epochs = args.epochs or (4 if args.fast else 10)
    words = args.words or (80_000 if args.fast else 400_000)

    logger, tensorboard = make_loggers(args.log_dir, "language_model")
    fabric = Fabric(loggers=[logger, tensorboard])
    fabric.launch()
    fabric.seed_everything(3)

    vocab = vocabulary()
    index = {word: i for i, word in enumerate(vocab)}
    train_tokens = torch.tensor([index[w] for w in corpus(words, seed=0)])
    val_tokens = torch.tensor([index[w] for w in corpus(words // 10, seed=1)])
    train_loader = DataLoader(
        windows(train_tokens, args.context), batch_size=args.batch_size, shuffle=True, drop_last=True
    )
    val_loader = DataLoader(windows(val_tokens, args.context), batch_size=128)
    train_loader, val_loader = fabric.setup_dataloaders(train_loader, val_loader)

    # FLOPs of one training step (forward and backward), counted on the meta device: nothing is computed
    with torch.device("meta"):
        meta_model = TinyTransformerLM(len(vocab), args.context)
        meta_batch = torch.zeros(args.batch_size, args.context, dtype=torch.long)
    flops_per_batch = measure_flops(meta_model, lambda: meta_model(meta_batch), lambda logits: logits.sum())

    model = TinyTransformerLM(len(vocab), args.context)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    model, optimizer = fabric.setup(model, optimizer)
    for each in fabric.loggers:
        each.log_hyperparams(vars(args) | {"vocabulary": len(vocab), "flops_per_batch": flops_per_batch})
    fabric.print(
        f"Language model on {fabric.world_size} process(es): {len(vocab)} words in the vocabulary,"
        f" {train_tokens.numel()} training tokens, {flops_per_batch / 1e6:.1f} MFLOPs per batch"
    )

    monitor = ThroughputMonitor(fabric, window_size=10)
    tokens_per_batch = args.batch_size * args.context
    step = 0
    metrics: dict[str, float] = {}
    for epoch in fabric.progress(range(epochs), desc="epochs", metrics=["train_loss", "val_loss"]):
        for inputs, targets in fabric.progress(train_loader, desc=f"epoch {epoch + 1}", metrics=["train_loss"]):
            logits = model(inputs)
            loss = cross_entropy(logits.flatten(0, 1), targets.flatten())
            optimizer.zero_grad()
            fabric.backward(loss)
            optimizer.step()
            step += 1
            monitor.update(
                batches=step, samples=step * args.batch_size, lengths=step * tokens_per_batch, flops=flops_per_batch
            )
            if step % args.log_every == 0:
                metrics = monitor.compute_and_log(step=step, train_loss=loss.item())
                fabric.print(
                    f"step {step}: loss {loss.item():.3f}, {metrics['items_per_sec']:,.0f} tokens/s over"
                    f" {fabric.world_size} process(es)"
                )
        val_loss = validation_loss(fabric, model, val_loader)
        fabric.log_dict({"val_loss": val_loss, "epoch": epoch}, step=step)
        fabric.print(f"epoch {epoch + 1}/{epochs}: validation loss {val_loss:.3f}, perplexity {math.exp(val_loss):.2f}")

    sample = generate(model, [index["the"]], steps=15, context=args.context, device=fabric.device)
    fabric.print("sample:", " ".join(vocab[i] for i in sample))
    finish(fabric, logger, [["train_loss", "val_loss"]], "language model: cross-entropy per token")
    if fabric.is_global_zero:
        tokens_per_sec = metrics.get("items_per_sec", float("nan"))
        print(
            f"final: validation loss {val_loss:.3f}, perplexity {math.exp(val_loss):.2f},"
            f" {tokens_per_sec:,.0f} tokens/s (metrics in {logger.log_dir})"
        )


if __name__ == "__main__":
    main()
