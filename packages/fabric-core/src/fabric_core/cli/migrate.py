"""``fabric migrate``: rewrite a codebase's Lightning Fabric imports and qualified names to this project's packages.

The rewriting is a libcst codemod (``fabric_core.cli.migrate_codemod``, imported only when the command runs, so that
neither ``import fabric_core`` nor ``fabric --help`` needs libcst). This module holds what needs no parser: the table
from Lightning's names to ours and the walk over paths; the command is in ``migrate_command``.
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from fabric_utils import OptionalDependency

LIBCST = OptionalDependency("libcst", install="pip install 'fabric-core[migrate]'")

# the packages whose ``__all__`` make the table, lowest layer first: a name exported twice goes to the lower layer
# unless the Lightning module it came from says otherwise (``SUBMODULE_PACKAGE``)
PACKAGES = (
    "fabric_utils",
    *("fabric_accelerators", "fabric_environments", "fabric_io", "fabric_precision"),  # one layer
    *("fabric_strategies", "fabric_loggers"),  # the next one
    "fabric_core",
)

# where the names of a Lightning Fabric module live here (the longest matching prefix wins)
SUBMODULE_PACKAGE = {
    "lightning.fabric": "fabric_core",
    "lightning.fabric.accelerators": "fabric_accelerators",
    "lightning.fabric.strategies": "fabric_strategies",
    "lightning.fabric.plugins.precision": "fabric_precision",
    "lightning.fabric.plugins.environments": "fabric_environments",
    "lightning.fabric.plugins.io": "fabric_io",
    "lightning.fabric.plugins.collectives": "fabric_strategies",
    "lightning.fabric.loggers": "fabric_loggers",
    "lightning.fabric.utilities": "fabric_utils",
    "lightning.fabric.utilities.throughput": "fabric_core",
    "lightning.fabric.wrappers": "fabric_core",
}

# Lightning names that are spelled differently here (docs/guide/migrating.md lists the same)
RENAMED = {
    "pl_worker_init_function": ("fabric_utils", "seed_worker"),
    "_PATH": ("fabric_utils", "PathLike"),
    "_FabricModule": ("fabric_core", "FabricModule"),
    "_FabricOptimizer": ("fabric_core", "FabricOptimizer"),
    "_FabricDataLoader": ("fabric_core", "FabricDataLoader"),
}

# Lightning Fabric's modules, so that ``from lightning.fabric.utilities import seed`` binds a module, not a name
LIGHTNING_MODULES = frozenset(
    {
        "lightning",
        *SUBMODULE_PACKAGE,
        "lightning.fabric.plugins",
        "lightning.fabric.connector",
        "lightning.fabric.cli",
        *(
            f"lightning.fabric.utilities.{name}"
            for name in (
                "apply_func",
                "cloud_io",
                "consolidate_checkpoint",
                "data",
                "device_dtype_mixin",
                "device_parser",
                "distributed",
                "enums",
                "exceptions",
                "imports",
                "init",
                "load",
                "logger",
                "optimizer",
                "rank_zero",
                "registry",
                "seed",
                "spike",
                "testing",
                "types",
                "warnings",
            )
        ),
    }
)

# names that the top-level ``lightning`` package re-exports from Lightning Fabric
LIGHTNING_TOP_LEVEL = {
    "Fabric": "lightning.fabric.Fabric",
    "seed_everything": "lightning.fabric.utilities.seed_everything",
}


class Target(NamedTuple):
    """Where a Lightning name lives here: ``from package import name``."""

    package: str
    name: str


@dataclass(frozen=True)
class Unmapped:
    """A Lightning name that has no counterpart here, where it was met, and the closest name that exists."""

    path: str
    line: int
    name: str
    suggestion: str | None
    fabric: bool  # False: a Lightning name outside Lightning Fabric (``lightning.pytorch``, ``LightningModule``)

    def __str__(self) -> str:
        if not self.fabric:
            why = "part of Lightning, not of Lightning Fabric: left as it is"
        elif self.name.endswith(".*"):
            why = "a star import: import the names you use by name, then run fabric migrate again"
        elif self.suggestion is None:
            why = "no counterpart and no close name"
        else:
            why = f"no counterpart; closest: {self.suggestion}"
        return f"{self.path}:{self.line}: cannot map {self.name} ({why})"


def canonical(dotted: str) -> str | None:
    """The Lightning Fabric spelling of a ``lightning``/``lightning_fabric`` dotted name, ``None`` for other names."""
    head, _, rest = dotted.partition(".")
    if head == "lightning_fabric":
        return "lightning.fabric" + (f".{rest}" if rest else "")
    if head != "lightning":
        return None
    first = rest.split(".", 1)[0]
    if first in LIGHTNING_TOP_LEVEL:
        return LIGHTNING_TOP_LEVEL[first] + rest[len(first) :]
    return dotted


def is_fabric(name: str) -> bool:
    """Whether a canonical Lightning name belongs to Lightning Fabric."""
    return name == "lightning.fabric" or name.startswith("lightning.fabric.")


class NameTable:
    """Lightning Fabric's qualified names -> ours, from each package's ``__all__`` (read when the command runs)."""

    def __init__(self, exports: Mapping[str, Sequence[str]]) -> None:
        self.exports = {package: frozenset(names) for package, names in exports.items()}

    @classmethod
    def from_installed(cls) -> NameTable:
        exports = {}
        for package in PACKAGES:
            try:
                exports[package] = list(importlib.import_module(package).__all__)
            except ImportError:  # fabric-loggers is an optional extra of fabric-core
                continue
        return cls(exports)

    def lookup(self, qualified: str) -> Target | None:
        """Our name for a canonical Lightning Fabric name, ``None`` for a module or a name with no counterpart."""
        if not is_fabric(qualified) or qualified in LIGHTNING_MODULES:
            return None
        parent, _, name = qualified.rpartition(".")
        if not all(part.islower() for part in parent.split(".")):
            return None  # an attribute of a class (``Fabric.seed_everything``), not a name a module exports
        if name in RENAMED:
            package, ours = RENAMED[name]
            return Target(package, ours) if ours in self.exports.get(package, ()) else None
        prefixes = [prefix for prefix in SUBMODULE_PACKAGE if parent == prefix or parent.startswith(prefix + ".")]
        preferred = SUBMODULE_PACKAGE[max(prefixes, key=len)] if prefixes else None
        if preferred is not None and name in self.exports.get(preferred, ()):
            return Target(preferred, name)
        for package in PACKAGES:
            if name in self.exports.get(package, ()):
                return Target(package, name)
        return None

    def suggest(self, qualified: str) -> str | None:
        """The closest name that exists here, as ``package.name``, or ``None``."""
        wanted = qualified.rpartition(".")[2].strip("_")
        by_lower = {
            name.lower(): (package, name) for package in reversed(PACKAGES) for name in self.exports.get(package, ())
        }
        close = difflib.get_close_matches(wanted.lower(), by_lower, n=1, cutoff=0.6)
        if not close:  # no name spelled alike: one that contains every word of it, best one that starts with it
            words = [word for word in wanted.lower().split("_") if word]
            holding = [name for name in by_lower if words and all(word in name for word in words)]
            close = sorted(holding, key=lambda name: (not name.startswith(words[0]), len(name), name))[:1]
        if not close:
            return None
        package, name = by_lower[close[0]]
        return f"{package}.{name}"


def python_files(paths: Sequence[str]) -> Iterator[Path]:
    """Each path that is a file, and the ``*.py`` files under each directory (hidden folders, caches and virtual
    environments skipped), in a stable order, each file once."""
    seen: set[Path] = set()
    for found in _walk(paths):
        if found.resolve() not in seen:
            seen.add(found.resolve())
            yield found


def _walk(paths: Sequence[str]) -> Iterator[Path]:
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            yield path
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(
                d
                for d in dirs
                if not d.startswith(".") and d != "__pycache__" and not (Path(root, d) / "pyvenv.cfg").exists()
            )
            yield from (Path(root, name) for name in sorted(files) if name.endswith(".py"))
