"""The ``Precision`` base: how weights, inputs, outputs, backward and optimizer steps handle numeric precision.

The base class itself is full 32-bit precision ("32-true"): every hook is the identity.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer

from fabric_utils import Optimizable, Steppable, apply_to_collection


class Precision:
    """Precision plugin. Strategies call these hooks; the wrappers of fabric-core call the forward ones.

    The three ``needs_*`` properties let the wrappers skip work on the hot path: when all are False a wrapped
    forward costs a single extra Python call.
    """

    #: the canonical name of this precision, e.g. "32-true", "bf16-mixed"
    precision: str = "32-true"

    # -- what the wrappers may skip -------------------------------------------------------------------------------
    @property
    def needs_forward_context(self) -> bool:
        """Whether ``forward_context`` does anything (autocast, a default dtype)."""
        return type(self).forward_context is not Precision.forward_context

    @property
    def needs_input_conversion(self) -> bool:
        return type(self).convert_input is not Precision.convert_input

    @property
    def needs_output_conversion(self) -> bool:
        return type(self).convert_output is not Precision.convert_output

    # -- module and tensors ---------------------------------------------------------------------------------------
    def convert_module(self, module: Module) -> Module:
        """Convert the module's parameters/buffers (e.g. to half); called once by ``setup``."""
        return module

    def tensor_init_context(self) -> AbstractContextManager[Any]:
        """Context in which new tensors get this precision's dtype (``Fabric.init_tensor``)."""
        return nullcontext()

    def module_init_context(self) -> AbstractContextManager[Any]:
        """Context in which new modules get this precision's dtype (``Fabric.init_module``)."""
        return self.tensor_init_context()

    def forward_context(self) -> AbstractContextManager[Any]:
        """Context around the module's forward (autocast for mixed precision)."""
        return nullcontext()

    def convert_input(self, data: Any) -> Any:
        """Convert floating-point inputs of the forward to this precision's dtype."""
        return data

    def convert_output(self, data: Any) -> Any:
        """Convert floating-point outputs of the forward back to the default dtype."""
        return data

    # -- backward and step ----------------------------------------------------------------------------------------
    def pre_backward(self, tensor: Tensor, module: Module | None) -> Any:
        """Runs before backward; may return a replacement tensor (e.g. the loss scaled by a GradScaler)."""
        return tensor

    def backward(self, tensor: Tensor, model: Module | None, *args: Any, **kwargs: Any) -> None:
        tensor.backward(*args, **kwargs)

    def post_backward(self, tensor: Tensor, module: Module | None) -> Any:
        return tensor

    def optimizer_step(self, optimizer: Optimizable | Steppable, **kwargs: Any) -> Any:
        """Step the optimizer (through a GradScaler where the precision uses one)."""
        return optimizer.step(**kwargs)

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        """Undo loss scaling on the gradients before they are clipped or inspected."""

    def main_params(self, optimizer: Optimizer) -> Iterator[torch.nn.Parameter]:
        """The parameters the optimizer updates (the ones gradient clipping should look at)."""
        for group in optimizer.param_groups:
            yield from group["params"]

    # -- checkpoint -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """State to save in checkpoints (e.g. the GradScaler's)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def teardown(self) -> None:
        """Undo global changes (e.g. the default dtype)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(precision={self.precision!r})"


class ForwardInDtype(Precision):
    """A precision whose forward takes its floating-point inputs in the precision's dtype (``_dtype``, set by the
    subclass) and gives its floating-point outputs back in the default dtype."""

    _dtype: torch.dtype

    def convert_input(self, data: Any) -> Any:
        return convert_floating_tensors(data, self._dtype)

    def convert_output(self, data: Any) -> Any:
        return convert_floating_tensors(data, output_dtype())


def convert_floating_tensors(data: Any, dtype: torch.dtype) -> Any:
    """Cast every floating-point tensor in a collection to ``dtype``; other tensors and objects are left alone.

    Containers are rebuilt with their own type, as ``fabric_utils.apply_to_collection`` does. The common cases of a
    forward call (plain tensors, tuples, lists, dicts, ``None``, numbers, strings) are handled here directly, on the
    per-step hot path; anything else (subclasses, namedtuples, dataclasses, other mappings) takes the general walk.
    """
    kind = type(data)
    if kind is Tensor:
        if data.dtype == dtype or not data.is_floating_point():
            return data
        cast = _CASTS.get(dtype)
        return cast(data) if cast is not None else data.to(dtype)
    if kind is tuple or kind is list:
        # a plain loop, not a comprehension: one Python frame less per container (this runs on every forward)
        items = []
        for value in data:
            items.append(value if type(value) in _UNCHANGED else convert_floating_tensors(value, dtype))
        return tuple(items) if kind is tuple else items
    if kind is dict:
        return {key: convert_floating_tensors(value, dtype) for key, value in data.items()} if data else {}
    if kind in _UNCHANGED:
        return data
    return apply_to_collection(data, Tensor, _converter(dtype))


# ``tensor.float()`` and the like: the same result as ``tensor.to(dtype)``, without ``to``'s overload resolution
# (about 1 µs per call)
_CASTS: dict[torch.dtype, Callable[[Tensor], Tensor]] = {
    torch.float32: Tensor.float,
    torch.float64: Tensor.double,
    torch.float16: Tensor.half,
    torch.bfloat16: Tensor.bfloat16,
}
# types ``convert_floating_tensors`` returns unchanged without walking them
_UNCHANGED: frozenset[type] = frozenset({type(None), bool, int, float, complex, str, bytes})


def _converter(dtype: torch.dtype) -> Any:
    def convert(tensor: Tensor) -> Tensor:
        return tensor.to(dtype) if torch.is_floating_point(tensor) and tensor.dtype != dtype else tensor

    return convert


# The default dtypes that were current when each open ``default_dtype`` block was entered (outermost first).
_OUTER_DEFAULT_DTYPES: list[torch.dtype] = []


@contextmanager
def default_dtype(dtype: torch.dtype) -> Generator[None, None, None]:
    """Temporarily change ``torch.get_default_dtype()``."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    _OUTER_DEFAULT_DTYPES.append(previous)
    try:
        yield
    finally:
        _OUTER_DEFAULT_DTYPES.pop()
        torch.set_default_dtype(previous)


def output_dtype() -> torch.dtype:
    """The dtype forward outputs are converted back to: the default dtype outside every ``default_dtype`` block.

    Answering from outside the blocks keeps ``convert_output`` right even when it runs inside ``forward_context``.
    (``MixedPrecision`` writes this expression out in its per-forward conversions; keep them in step.)
    """
    return _OUTER_DEFAULT_DTYPES[0] if _OUTER_DEFAULT_DTYPES else torch.get_default_dtype()


def check_choice(what: str, value: object, choices: Iterable[str]) -> None:
    """Raise ``ValueError`` naming ``value`` and listing ``choices`` unless ``value`` is one of them."""
    options = tuple(choices)
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"Unknown {what} {value!r}. Choose one of: {', '.join(options)}")


#: the compute dtype of each built-in precision name
PRECISION_DTYPES: dict[str, torch.dtype] = {
    "64-true": torch.float64,
    "32-true": torch.float32,
    "16-true": torch.float16,
    "bf16-true": torch.bfloat16,
    "16-mixed": torch.float16,
    "bf16-mixed": torch.bfloat16,
}


def replace_submodule(root: Module, name: str, replacement: Module) -> None:
    """Put ``replacement`` where the submodule ``name`` (a qualified name from ``named_modules()``) is."""
    parent_name, _, child_name = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child_name, replacement)
