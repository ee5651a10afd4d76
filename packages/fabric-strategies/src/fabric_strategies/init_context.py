"""Contexts for creating modules and tensors: on the target device, optionally without running initialisation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.overrides import TorchFunctionMode
from typing_extensions import override


class SkipParameterInit(TorchFunctionMode):
    """Inside this mode the functions of ``torch.nn.init`` return their tensor untouched.

    Creating a large module then costs only the allocation; the values are whatever memory held, so the weights must
    be loaded (e.g. from a checkpoint) before use.
    """

    @override
    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs.get("tensor")
        return func(*args, **kwargs)
