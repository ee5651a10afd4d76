"""Fake ``torch_xla.distributed.xla_multiprocessing``: ``spawn`` runs the function here, as process index 0."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch_xla import _fake


def spawn(
    fn: Callable[..., Any],
    args: tuple[Any, ...] = (),
    nprocs: int | None = None,
    join: bool = True,
    daemon: bool = False,
    start_method: str = "spawn",
) -> None:
    _fake.record("spawn", {"nprocs": nprocs, "start_method": start_method})
    fn(0, *args)  # like torch_xla, the return value is not handed back
