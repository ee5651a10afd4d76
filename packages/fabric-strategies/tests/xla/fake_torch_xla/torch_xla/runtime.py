"""Fake ``torch_xla.runtime``: ranks and sizes from the fake's state."""

from __future__ import annotations

from torch_xla import _fake


def world_size() -> int:
    return _fake.state.world_size


def global_ordinal() -> int:
    return _fake.state.global_ordinal


def local_ordinal() -> int:
    return _fake.state.local_ordinal


def global_runtime_device_count() -> int:
    return _fake.state.device_count
