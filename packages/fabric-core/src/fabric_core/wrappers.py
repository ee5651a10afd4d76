"""Thin wrappers returned by ``Fabric.setup``: a module and an optimizer (the dataloader's is in ``loader.py``).

Hot paths do only what the configuration needs. With a precision whose ``needs_*`` properties are all False (e.g.
32-true) and no strategy wrapper, a wrapped forward is ``FabricModule.__call__`` -> the module's own ``__call__``:
one extra Python call.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from fabric_core.loader import FabricDataLoader
from fabric_precision import Precision
from fabric_strategies import Strategy

# attributes that live on the FabricModule itself; everything else is read from / written to the original module
_MODULE_OWN = frozenset(
    {
        "_original_module",
        "_precision",
        "_plain",
        "_forward_target",
        "_forward_methods",
        "_needs_input",
        "_needs_context",
        "_needs_output",
    }
)


class FabricModule(nn.Module):
    """The module returned by ``Fabric.setup``: forward runs through the strategy's wrapper under the precision.

    Attribute reads and writes, ``state_dict`` and ``load_state_dict`` pass through to the original module, which
    ``.module`` returns. When the strategy wrapped the module (DDP, FSDP, DeepSpeed), a call of a method that the
    module's own class defines (``model.generate(x)``) runs through the wrapper and the precision like ``forward``,
    so gradients stay synchronised and parameters unsharded; :meth:`mark_forward_method` does the same for a method
    on an unwrapped module (for the precision) and for methods inherited from torch classes.
    """

    def __init__(
        self,
        forward_module: nn.Module,
        precision: Precision,
        original_module: nn.Module | None = None,
        compiled_module: nn.Module | None = None,
    ):
        super().__init__()
        self._forward_module = forward_module
        own = self.__dict__
        if compiled_module is not None:  # torch.compile of forward_module: forward calls run through it
            own["_forward_target"] = compiled_module
        own["_original_module"] = original_module if original_module is not None else forward_module
        own["_precision"] = precision
        own["_forward_methods"] = set()
        own["_needs_input"] = precision.needs_input_conversion
        own["_needs_context"] = precision.needs_forward_context
        own["_needs_output"] = precision.needs_output_conversion
        own["_plain"] = not (own["_needs_input"] or own["_needs_context"] or own["_needs_output"])

    def _forward_with_precision(self, *args: Any, **kwargs: Any) -> Any:
        if self._plain:
            return self._forward_target(*args, **kwargs)
        precision = self._precision
        if self._needs_input:
            args, kwargs = precision.convert_input((args, kwargs))
        if self._needs_context:
            with precision.forward_context():
                output = self._forward_target(*args, **kwargs)
        else:
            output = self._forward_target(*args, **kwargs)
        if self._needs_output:
            output = precision.convert_output(output)
        return output

    # calling the module (every forward) runs the function above directly, without nn.Module.__call__'s hooks
    # machinery; with nothing to convert it is one extra Python call before the wrapped module's own __call__
    __call__ = forward = _forward_with_precision

    @property
    def module(self) -> nn.Module:
        """The original module given to ``setup``."""
        return self._original_module

    @property
    def forward_module(self) -> nn.Module:
        """The module forward calls go through (the strategy's wrapper, e.g. ``DistributedDataParallel``)."""
        return self._modules["_forward_module"]  # type: ignore[return-value]

    # -- marked methods -------------------------------------------------------------------------------------------
    def mark_forward_method(self, method: str | Callable[..., Any]) -> None:
        """Route calls of ``method`` (a name or a bound method of the original module) through the strategy's
        wrapper and the precision, like ``forward`` (needed e.g. for ``generate`` under DDP/FSDP)."""
        name = method if isinstance(method, str) else getattr(method, "__name__", None)
        if not isinstance(name, str):
            raise TypeError(f"mark_forward_method expects a method name or a bound method, got {method!r}")
        if name == "forward":
            raise ValueError("`forward` already runs through the strategy's wrapper; mark other methods only")
        target = getattr(self._original_module, name, None)
        if not callable(target):
            raise ValueError(
                f"{type(self._original_module).__name__} has no method {name!r} to mark as a forward method"
            )
        self._forward_methods.add(name)

    def _redirected(self, name: str) -> Callable[..., Any]:
        original = self._original_module
        method = getattr(original, name)

        def call_through_wrapper(*args: Any, **kwargs: Any) -> Any:
            had_own = "forward" in original.__dict__
            previous = original.__dict__.get("forward")

            def restore() -> None:
                if had_own:
                    original.__dict__["forward"] = previous
                else:
                    original.__dict__.pop("forward", None)

            called = []

            def forward_once(*inner_args: Any, **inner_kwargs: Any) -> Any:
                restore()
                called.append(True)
                return method(*inner_args, **inner_kwargs)

            original.__dict__["forward"] = forward_once
            try:
                output = self._forward_with_precision(*args, **kwargs)
            finally:
                restore()
            if not called:
                wrapper = type(self._forward_target).__name__
                raise RuntimeError(
                    f"{type(original).__name__}.{name}() could not run through the strategy's wrapper ({wrapper}):"
                    f" the wrapper did not call the module's forward. Move the computation into forward(), or call"
                    f" `model.module.{name}(...)` to run it on the bare module, without the wrapper's"
                    " gradient synchronisation or unsharding."
                )
            return output

        call_through_wrapper.__name__ = name
        call_through_wrapper.__doc__ = getattr(method, "__doc__", None)
        return call_through_wrapper

    # -- pass-through ---------------------------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            pass
        own = self.__dict__
        if "_original_module" not in own:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        original = own["_original_module"]
        if name in own["_forward_methods"] or (
            own["_forward_target"] is not original and _is_user_method(type(original), name)  # type: ignore[arg-type]
        ):
            return self._redirected(name)
        return getattr(original, name)

    def __setattr__(self, name: str, value: Any) -> None:
        own = self.__dict__
        if name == "_forward_module":
            super().__setattr__(name, value)
            # the same module, also kept in the instance __dict__: reading it per call costs no nn.Module.__getattr__
            own["_forward_target"] = value
            return
        if "_forward_target" not in own or name in own or name in _MODULE_OWN:
            super().__setattr__(name, value)
            return
        setattr(own["_original_module"], name, value)

    def __delattr__(self, name: str) -> None:
        if name in self.__dict__ or name in self._modules:
            super().__delattr__(name)
        else:
            delattr(self._original_module, name)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self._original_module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self._original_module.load_state_dict(state_dict, strict=strict, assign=assign)

    def named_parameters(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, nn.Parameter]]:
        return self._original_module.named_parameters(*args, **kwargs)

    def named_buffers(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, torch.Tensor]]:
        return self._original_module.named_buffers(*args, **kwargs)

    def __repr__(self) -> str:
        return f"FabricModule({self._original_module!r})"


class FabricOptimizer(Optimizer):
    """The optimizer returned by ``Fabric.setup``: ``step`` goes through the strategy and the precision.

    It is an instance of the wrapped optimizer's class too (``isinstance(opt, torch.optim.AdamW)``), and every
    attribute (``param_groups``, ``state``, ``defaults``...) is the wrapped optimizer's, so LR schedulers work.
    """

    _own = frozenset({"_optimizer", "_strategy", "_after_step", "step"})
    _classes: dict[type, type] = {}

    def __new__(cls, optimizer: Optimizer, *args: Any, **kwargs: Any) -> FabricOptimizer:
        if cls is FabricOptimizer:
            cls = _combined_class(type(optimizer))
        return object.__new__(cls)

    def __init__(self, optimizer: Optimizer, strategy: Strategy, callbacks: Sequence[Any] = ()) -> None:
        own = self.__dict__
        own["_optimizer"] = optimizer
        own["_strategy"] = strategy
        own["_after_step"] = [
            hook for hook in (getattr(c, "on_after_optimizer_step", None) for c in callbacks) if callable(hook)
        ]

    @property
    def optimizer(self) -> Optimizer:
        """The optimizer given to ``setup``."""
        return self._optimizer  # type: ignore[no-any-return]

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        if closure is None:
            output = self._strategy.optimizer_step(self._optimizer)
        else:
            output = self._strategy.optimizer_step(self._optimizer, closure=closure)
        for hook in self._after_step:
            hook(strategy=self._strategy, optimizer=self._optimizer)
        return output

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self._strategy.get_optimizer_state(self._optimizer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._optimizer.add_param_group(param_group)

    def __getattr__(self, name: str) -> Any:
        try:
            optimizer = self.__dict__["_optimizer"]
        except KeyError:
            raise AttributeError(name) from None
        return getattr(optimizer, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._own:
            self.__dict__[name] = value
        else:
            setattr(self._optimizer, name, value)

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"FabricOptimizer({self._optimizer!r})"


def _combined_class(optimizer_cls: type) -> type:
    """``FabricOptimizer`` mixed with the wrapped optimizer's class (cached per class)."""
    combined = FabricOptimizer._classes.get(optimizer_cls)
    if combined is None:
        combined = type(f"Fabric{optimizer_cls.__name__}", (FabricOptimizer, optimizer_cls), {})
        FabricOptimizer._classes[optimizer_cls] = combined
    return combined


@functools.cache
def _is_user_method(cls: type, name: str) -> bool:
    """Whether ``name`` is a plain method that the module's own code defines (not ``torch``'s, e.g. ``nn.Module``'s
    or FSDP's), so calling it on a set-up module runs through the strategy's wrapper like ``forward``."""
    if name.startswith("__") or name == "forward":
        return False
    for klass in cls.__mro__:
        if name in klass.__dict__:
            defined_by_torch = klass.__module__.split(".")[0] == "torch"
            return not defined_by_torch and isinstance(klass.__dict__[name], types.FunctionType)
    return False


def is_wrapped(obj: object) -> bool:
    """Whether ``obj`` was returned by ``Fabric.setup``/``setup_dataloaders`` (also through ``torch.compile``)."""
    if isinstance(obj, (FabricModule, FabricOptimizer, FabricDataLoader)):
        return True
    original = getattr(obj, "_orig_mod", None)  # torch.compile's OptimizedModule
    return isinstance(original, FabricModule)


def unwrap(obj: Any) -> Any:
    """The original object behind a wrapper (module, optimizer); dataloader wrappers stay (they are stateful)."""
    original = getattr(obj, "_orig_mod", None)
    if isinstance(original, FabricModule):
        obj = original
    if isinstance(obj, FabricModule):
        return obj.module
    if isinstance(obj, FabricOptimizer):
        return obj.optimizer
    return obj


def unwrap_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` (a checkpoint's top level) with every set-up module and optimizer replaced by the original."""
    return {key: unwrap(value) for key, value in state.items()}


def hand_back_loaded(state: dict[str, Any], unwrapped: Mapping[str, Any]) -> None:
    """After a load into ``unwrap_state(state)``: put the plain entries it restored back into ``state``."""
    for key, value in unwrapped.items():
        if not is_wrapped(state[key]):
            state[key] = value
