"""The accelerator registry and the answers to ``accelerator="auto"`` and ``accelerator="gpu"``.

Third-party packages add accelerators through the ``fabric.accelerators`` entry-point group: the entry point loads to
a callable that receives the registry, typically ``MyAccelerator.register_accelerators``.
"""

from __future__ import annotations

from typing import Literal

from fabric_accelerators.base import Accelerator
from fabric_accelerators.cpu import CPUAccelerator
from fabric_accelerators.cuda import CUDAAccelerator
from fabric_accelerators.mps import MPSAccelerator
from fabric_accelerators.xla import XLAAccelerator
from fabric_utils import Registry, UnknownNameError

ACCELERATOR_REGISTRY: Registry[Accelerator] = Registry("accelerator", entry_point_group="fabric.accelerators")
ACCELERATOR_REGISTRY.register("cpu", CPUAccelerator)
ACCELERATOR_REGISTRY.register("cuda", CUDAAccelerator)
ACCELERATOR_REGISTRY.register("mps", MPSAccelerator)
ACCELERATOR_REGISTRY.register("xla", XLAAccelerator)
ACCELERATOR_REGISTRY.register("tpu", XLAAccelerator, description="Alias of 'xla' (XLAAccelerator).")

SPECIAL_NAMES = ("auto", "gpu")
"""Names ``resolve_accelerator_name`` answers that are not registry entries."""


class AcceleratorUnavailableError(ValueError):
    """An accelerator was requested that this machine cannot provide; the message lists the ones it can."""


def _accelerator_classes(registry: Registry[Accelerator]) -> dict[str, type[Accelerator]]:
    """Registry names mapped to their classes, skipping entries whose factory is not an ``Accelerator`` class."""
    classes = {}
    for name in registry:
        factory = registry.get(name)
        if isinstance(factory, type) and issubclass(factory, Accelerator):
            classes[name] = factory
    return classes


def _canonical_name(name: str, cls: type[Accelerator], classes: dict[str, type[Accelerator]]) -> str:
    """The class's own ``name`` when the registry maps it to the same class (``"tpu"`` -> ``"xla"``), else ``name``."""
    return cls.name if classes.get(cls.name) is cls else name


def available_accelerators(registry: Registry[Accelerator] | None = None) -> list[str]:
    """The registry names (aliases included) whose accelerator is available on this machine, sorted."""
    registry = ACCELERATOR_REGISTRY if registry is None else registry
    return [name for name, cls in _accelerator_classes(registry).items() if cls.is_available()]


def select_auto_accelerator(registry: Registry[Accelerator] | None = None) -> str:
    """The name of the available accelerator with the highest ``priority`` (built in: xla > cuda > mps > cpu).

    Reads the hardware probes only; constructs nothing and initialises no device. Ties go to the name that sorts first.
    """
    registry = ACCELERATOR_REGISTRY if registry is None else registry
    classes = _accelerator_classes(registry)
    best: tuple[int, str] | None = None
    for name, cls in classes.items():
        if not cls.is_available():
            continue
        if best is None or cls.priority > best[0]:
            best = (cls.priority, _canonical_name(name, cls, classes))
    if best is None:
        raise AcceleratorUnavailableError(
            f"No registered accelerator is available (registered: {', '.join(registry.names()) or 'none'})."
        )
    return best[1]


def resolve_gpu_accelerator() -> Literal["cuda", "mps"]:
    """What ``accelerator="gpu"`` means here: ``"cuda"`` when CUDA devices exist, else ``"mps"`` on Apple silicon."""
    if CUDAAccelerator.is_available():
        return "cuda"
    if MPSAccelerator.is_available():
        return "mps"
    raise AcceleratorUnavailableError(
        "`accelerator='gpu'` needs CUDA or MPS, and this machine has neither. "
        f"Available accelerators: {', '.join(available_accelerators())}."
    )


def resolve_accelerator_name(name: str, registry: Registry[Accelerator] | None = None) -> str:
    """Turn a user's ``accelerator`` string into an available registry name.

    ``"auto"`` picks by priority, ``"gpu"`` means CUDA or MPS, an alias becomes its class's name (``"tpu"`` ->
    ``"xla"``). Raises ``TypeError`` for a non-string, ``UnknownNameError`` (a ``ValueError``) for an unknown name and
    ``AcceleratorUnavailableError`` (a ``ValueError``) for an accelerator this machine lacks; each message lists the
    valid choices.
    """
    registry = ACCELERATOR_REGISTRY if registry is None else registry
    if not isinstance(name, str):
        raise TypeError(f"`accelerator` must be a name or an Accelerator, got {name!r} of type {type(name).__name__}.")
    if name == "auto":
        return select_auto_accelerator(registry)
    if name == "gpu":
        return resolve_gpu_accelerator()
    if name not in registry:
        raise UnknownNameError(registry.unknown_message(name, extra_choices=SPECIAL_NAMES))
    classes = _accelerator_classes(registry)
    cls = classes.get(name)
    if cls is None:  # a third-party factory that is not an Accelerator class: nothing to check
        return name
    if not cls.is_available():
        raise AcceleratorUnavailableError(
            f"`accelerator={name!r}` is not available on this machine. "
            f"Available accelerators: {', '.join(available_accelerators(registry))}."
        )
    return _canonical_name(name, cls, classes)
