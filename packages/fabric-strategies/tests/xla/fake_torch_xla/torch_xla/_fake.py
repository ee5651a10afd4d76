"""The state of the fake torch_xla: the world size it pretends and the calls it received."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FakeState:
    world_size: int = 1
    global_ordinal: int = 0
    local_ordinal: int = 0
    device_count: int = 1
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def arguments(self, name: str) -> list[Any]:
        return [args for call, args in self.calls if call == name]


state = FakeState()


def record(name: str, args: Any = None) -> None:
    state.calls.append((name, args))
