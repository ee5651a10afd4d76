"""A stand-in for ``torch_xla`` on machines without one, installed by the ``fake_xla`` fixture (tests only).

It implements just what fabric's XLA strategies call, on CPU tensors, in one process. ``_fake.state`` holds the
settings a test chooses (the world size this process pretends to be part of) and records the calls. With a world
size above 1 every other "process" is a mirror of this one: it holds the same tensors, so an all-gather repeats the
local tensor, a sum multiplies it by the world size, and a broadcast changes nothing.
"""

from __future__ import annotations

import torch

from torch_xla import _fake


def device(index: int | None = None) -> torch.device:
    _fake.record("device", index)
    return torch.device("cpu")


def sync() -> None:
    _fake.record("sync")
