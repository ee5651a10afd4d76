"""One generic registry: names -> factories, with descriptions and entry-point discovery."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from fabric_utils.exceptions import PossibleUserWarning, UnknownNameError
from fabric_utils.rank_zero import rank_zero_warn

_T = TypeVar("_T")


@dataclass(frozen=True)
class RegistryEntry(Generic[_T]):
    """A registered name: the factory that builds it, the keyword arguments it is built with, and a description."""

    name: str
    factory: Callable[..., _T]
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class _DeferredEntry:
    """A name whose factory is imported from ``target`` (``"module:attribute"``) when the name is first looked up."""

    name: str
    target: str
    init_kwargs: dict[str, Any]
    description: str


class Registry(Generic[_T]):
    """Maps names to factories (usually classes) plus default keyword arguments.

    Iterating a registry yields its names. Third-party packages add names through the entry-point group given
    as ``entry_point_group``. An entry point may load to a class, which is registered under the entry point's name,
    or to a function, which is called with the registry and registers what it wants. Entry points are loaded
    lazily, the first time the registry is queried; one that fails to load is reported with a warning and skipped.

    A name registered with :meth:`register_deferred` names its factory as ``"module:attribute"``: the module is
    imported when that name is first looked up, so listing names and descriptions imports nothing.

    Every package registers its built-ins the same way: its ``registry`` module creates the registry and then calls
    :meth:`register` once per name (one class may stand under several names with other keyword arguments), or
    :meth:`register_deferred` for a class whose module should load on first use::

        STRATEGY_REGISTRY: Registry[Strategy] = Registry("strategy", entry_point_group="fabric.strategies")
        STRATEGY_REGISTRY.register("ddp_spawn", DDPStrategy, description="...", start_method="spawn")
        STRATEGY_REGISTRY.register_deferred("fsdp", "fabric_strategies.fsdp.strategy:FSDPStrategy", description="...")

    The classes' own registering classmethods (``Accelerator.register_accelerators``,
    ``Strategy.register_strategies``) are for third-party entry points and subclasses, not for built-ins.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, RegistryEntry[_T]] = {}
        self._deferred: dict[str, _DeferredEntry] = {}
        self._entry_points_loaded = entry_point_group is None

    def register(
        self,
        name: str,
        factory: Callable[..., _T] | None = None,
        *,
        description: str = "",
        override: bool = False,
        **init_kwargs: Any,
    ) -> Any:
        """Register ``factory`` under ``name``; without ``factory`` this returns a decorator."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"A {self.kind} name must be a non-empty string, got {name!r}")

        def do_register(fn: Callable[..., _T]) -> Callable[..., _T]:
            if not callable(fn):
                raise TypeError(f"A {self.kind} must be registered with a class or a callable, got {fn!r}")
            self._refuse_taken(name, override)
            doc = description or _first_doc_line(fn)
            self._entries[name] = RegistryEntry(name=name, factory=fn, init_kwargs=dict(init_kwargs), description=doc)
            self._deferred.pop(name, None)
            return fn

        if factory is not None:
            return do_register(factory)
        return do_register

    def register_deferred(
        self, name: str, target: str, *, description: str, override: bool = False, **init_kwargs: Any
    ) -> None:
        """Register the factory found at ``target`` (``"package.module:Attribute"``) under ``name`` without importing
        it; the import happens on the first :meth:`entry`, :meth:`get` or :meth:`create` of ``name``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"A {self.kind} name must be a non-empty string, got {name!r}")
        module, _, attribute = target.partition(":") if isinstance(target, str) else ("", "", "")
        if not module or not attribute:
            raise ValueError(f"A deferred {self.kind} target must read 'package.module:Attribute', got {target!r}")
        self._refuse_taken(name, override)
        self._entries.pop(name, None)
        self._deferred[name] = _DeferredEntry(name, target, dict(init_kwargs), description)

    def _refuse_taken(self, name: str, override: bool) -> None:
        """``ValueError`` when ``name`` is registered already (loaded or deferred), unless ``override``."""
        if override or (name not in self._entries and name not in self._deferred):
            return
        taken = self._entries[name].factory if name in self._entries else self._deferred[name].target
        raise ValueError(
            f"The {self.kind} name {name!r} is already registered to {taken!r}. Pass `override=True` to replace it."
        )

    def remove(self, name: str) -> None:
        """Forget ``name``; unknown names raise ``UnknownNameError`` listing the known ones."""
        if not isinstance(name, str) or self._deferred.pop(name, None) is None:
            self.entry(name)
            del self._entries[name]

    def _ensure_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        assert self.entry_point_group is not None
        for ep in entry_points(group=self.entry_point_group):
            try:
                loaded = ep.load()
                if isinstance(loaded, type):
                    self.register(ep.name, loaded)
                elif callable(loaded):
                    loaded(self)
                else:
                    raise TypeError(f"it loads {loaded!r}, which is neither a class nor a registering function")
            except Exception as err:  # a broken plugin must not break every run
                rank_zero_warn(
                    f"Skipped the {self.kind} plugin {ep.name!r} (entry point {ep.value!r} in group"
                    f" {self.entry_point_group!r}): {type(err).__name__}: {err}",
                    category=PossibleUserWarning,
                )

    def entry(self, name: str) -> RegistryEntry[_T]:
        self._ensure_entry_points()
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable "name"
            pass
        deferred = self._deferred.get(name) if isinstance(name, str) else None
        if deferred is None:
            raise UnknownNameError(self.unknown_message(name))
        return self._load_deferred(deferred)

    def _load_deferred(self, deferred: _DeferredEntry) -> RegistryEntry[_T]:
        module, _, attribute = deferred.target.partition(":")
        factory = getattr(importlib.import_module(module), attribute)
        entry: RegistryEntry[_T] = RegistryEntry(
            name=deferred.name, factory=factory, init_kwargs=deferred.init_kwargs, description=deferred.description
        )
        self._entries[deferred.name] = entry
        del self._deferred[deferred.name]
        return entry

    def get(self, name: str) -> Callable[..., _T]:
        """The factory registered under ``name``."""
        return self.entry(name).factory

    def create(self, name: str, **kwargs: Any) -> _T:
        """Build the object registered under ``name`` with its registered keyword arguments updated by ``kwargs``."""
        entry = self.entry(name)
        return entry.factory(**{**entry.init_kwargs, **kwargs})

    def unknown_message(self, name: object, extra_choices: tuple[str, ...] = ()) -> str:
        """The message for an unknown name: it names the value exactly as given and lists ``extra_choices`` and
        every known name; a name that differs from a known one only in case or surrounding spaces is pointed at it."""
        choices = [*extra_choices, *self.names()]
        hint = _case_hint(name, choices)
        return f"Unknown {self.kind} {name!r}{hint}. Choose one of: {', '.join(choices)} (or register your own)."

    def names(self) -> list[str]:
        """The registered names, sorted."""
        self._ensure_entry_points()
        return sorted([*self._entries, *self._deferred])

    def descriptions(self) -> dict[str, str]:
        self._ensure_entry_points()
        known = {name: entry.description for name, entry in self._deferred.items()}
        known.update((name, entry.description) for name, entry in self._entries.items())
        return {name: known[name] for name in sorted(known)}

    def __contains__(self, name: object) -> bool:
        self._ensure_entry_points()
        try:
            return name in self._entries or name in self._deferred
        except TypeError:  # an unhashable "name"
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._ensure_entry_points()
        return len(self._entries) + len(self._deferred)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"


def _first_doc_line(obj: object) -> str:
    doc = getattr(obj, "__doc__", None) or ""
    for line in doc.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _case_hint(name: object, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` when ``name`` matches the choice ``x`` up to case and surrounding spaces."""
    if not isinstance(name, str):
        return ""
    folded = name.strip().casefold()
    match = next((choice for choice in choices if choice.casefold() == folded), None)
    if match is None or match == name:
        return ""
    return f" (did you mean {match!r}?)"
