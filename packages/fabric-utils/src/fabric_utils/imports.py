"""Lazy checks for optional dependencies: nothing is imported until asked for."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
from typing import TYPE_CHECKING, Any

from fabric_utils.exceptions import MissingDependencyError

if TYPE_CHECKING:  # packaging is imported on the first version comparison (~800 objects at start-up otherwise)
    from packaging.version import Version


@functools.cache
def module_available(module_name: str) -> bool:
    """Whether ``module_name`` can be imported, answered without importing it (parents excepted)."""
    try:
        return importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        return False


def package_version(distribution: str) -> Version | None:
    """The installed version of a distribution, or ``None`` when it is not installed."""
    from packaging.version import Version

    try:
        return Version(version(distribution))
    except PackageNotFoundError:
        return None


class OptionalDependency:
    """One optional dependency: ``bool(dep)`` says whether it is installed, ``dep.require()`` imports it or raises.

    The error names the feature that needs it and the command that installs it.
    """

    def __init__(
        self,
        module: str,
        distribution: str | None = None,
        *,
        install: str | None = None,
        min_version: str | None = None,
    ) -> None:
        self.module = module
        self.distribution = distribution or module
        self.min_version = min_version
        requirement = f"'{self.distribution}>={min_version}'" if min_version else self.distribution
        self.install = install or f"pip install {requirement}"

    @property
    def available(self) -> bool:
        """Whether the module can be imported (and, with ``min_version``, is recent enough); nothing is imported."""
        if not module_available(self.module):
            return False
        if self.min_version is None:
            return True
        from packaging.version import Version

        installed = package_version(self.distribution)
        return installed is not None and installed >= Version(self.min_version)

    def __bool__(self) -> bool:
        return self.available

    def require(self, feature: str = "this feature") -> ModuleType:
        """Import and return the module, or raise ``MissingDependencyError`` naming ``feature``, the requirement,
        what is installed instead, and the command that installs it."""
        if not self.available:
            needed = f"{self.distribution}>={self.min_version}" if self.min_version else self.distribution
            found = package_version(self.distribution) if module_available(self.module) else None
            if found is None:
                raise MissingDependencyError(
                    f"{feature} requires `{needed}`, but it is not installed. Run: {self.install}"
                )
            # an old copy is there: a plain install command would leave it in place
            raise MissingDependencyError(
                f"{feature} requires `{needed}`, but only version {found} is installed. Run: pip install -U '{needed}'"
            )
        return importlib.import_module(self.module)

    def __repr__(self) -> str:
        return f"OptionalDependency({self.module!r}, available={self.available})"


DEEPSPEED = OptionalDependency("deepspeed", install="pip install 'fabric-strategies[deepspeed]'")
TORCH_XLA = OptionalDependency("torch_xla", "torch-xla", install="pip install torch-xla")
TENSORBOARDX = OptionalDependency("tensorboardX", install="pip install 'fabric-loggers[tensorboard]'")
TENSORBOARD = OptionalDependency("tensorboard")
FSSPEC = OptionalDependency("fsspec")
S3FS = OptionalDependency("s3fs", install="pip install s3fs")
BITSANDBYTES = OptionalDependency("bitsandbytes", install="pip install bitsandbytes")
TRANSFORMER_ENGINE = OptionalDependency(
    "transformer_engine", "transformer-engine", install="pip install 'transformer-engine[pytorch]'"
)
MPI4PY = OptionalDependency("mpi4py", install="pip install mpi4py")
NUMPY = OptionalDependency("numpy")


def names_on_access(package: str, modules: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package`` whose public names in ``modules`` (name -> module
    that defines it) are imported on first access, keeping those modules out of ``import package``.

    Use as ``__getattr__, __dir__ = names_on_access(__name__, {...})``; a name once imported is stored in the package.
    """

    def get_name(name: str) -> Any:
        module = modules.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def list_names() -> list[str]:
        return sorted({*vars(sys.modules[package]), *modules})

    return get_name, list_names
