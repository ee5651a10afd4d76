"""One generic registry: names -> factories, with descriptions and entry-point discovery."""

from __future__ import annotations

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


class Registry(Generic[_T]):
    """Maps names to factories (usually classes) plus default keyword arguments.

    Iterating a registry yields its names. Third-party packages add names through the entry-point group given
    as ``entry_point_group``. An entry point may load to a class, which is registered under the entry point's name,
    or to a function, which is called with the registry and registers what it wants. Entry points are loaded
    lazily, the first time the registry is queried; one that fails to load is reported with a warning and skipped.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, RegistryEntry[_T]] = {}
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
            if name in self._entries and not override:
                raise ValueError(
                    f"The {self.kind} name {name!r} is already registered to {self._entries[name].factory!r}."
                    " Pass `override=True` to replace it."
                )
            doc = description or _first_doc_line(fn)
            self._entries[name] = RegistryEntry(name=name, factory=fn, init_kwargs=dict(init_kwargs), description=doc)
            return fn

        if factory is not None:
            return do_register(factory)
        return do_register

    def remove(self, name: str) -> None:
        """Forget ``name``; unknown names raise ``UnknownNameError`` listing the known ones."""
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
            raise UnknownNameError(self.unknown_message(name)) from None

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
        return sorted(self._entries)

    def descriptions(self) -> dict[str, str]:
        self._ensure_entry_points()
        return {name: self._entries[name].description for name in sorted(self._entries)}

    def __contains__(self, name: object) -> bool:
        self._ensure_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._ensure_entry_points()
        return len(self._entries)

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
