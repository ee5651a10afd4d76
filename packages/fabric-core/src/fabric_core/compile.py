"""``torch.compile`` and ``Fabric.setup``: the order of the two does not matter.

A model compiled before ``setup`` arrives as torch's ``OptimizedModule``. ``setup`` takes the model out of it (so
precision conversion, the strategy's wrapping and checkpoints see the model itself, with its own parameter names),
lets the strategy wrap it (DDP, FSDP2's per-block ``fully_shard``, tensor parallelism) and then compiles the wrapped
module again with the user's settings: torch keeps them (backend, mode, options, ``fullgraph``, ``dynamic``) in the
``OptimizedModule``'s dynamo context, and a new ``OptimizedModule`` built on that context compiles the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from fabric_strategies import unwrap_module


@dataclass(frozen=True)
class Compilation:
    """How the user compiled a model: torch's wrapper class and its dynamo context (backend and every option)."""

    wrapper: type[nn.Module]
    context: Any

    def apply(self, module: nn.Module) -> nn.Module:
        """``module`` compiled as the user's model was (the same as ``torch.compile(module, **same_options)``)."""
        return self.wrapper(module, self.context)  # type: ignore[call-arg]


def split_compiled(module: Any) -> tuple[Any, Compilation | None]:
    """The model inside ``torch.compile``'s wrapper and how it was compiled; ``(module, None)`` when not compiled.

    A model compiled twice is compiled again once, with the outer (last) settings.
    """
    context = getattr(module, "dynamo_ctx", None) if isinstance(module, nn.Module) else None
    if context is None:
        return module, None
    return unwrap_module(module), Compilation(wrapper=type(module), context=context)
