from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric_utils import PossibleUserWarning, Registry, RegistryEntry, UnknownNameError


class Widget:
    """A widget for tests.

    More text that is not part of the description.
    """

    def __init__(self, size: int = 1, color: str = "red") -> None:
        self.size = size
        self.color = color


class Gadget:
    pass


def test_register_and_create_with_default_and_call_kwargs() -> None:
    registry: Registry[Widget] = Registry("widget")
    registry.register("big", Widget, size=10)
    assert "big" in registry
    assert registry.get("big") is Widget
    built = registry.create("big")
    assert (built.size, built.color) == (10, "red")
    overridden = registry.create("big", size=3, color="blue")
    assert (overridden.size, overridden.color) == (3, "blue")


def test_register_as_decorator_returns_the_class_and_uses_its_docstring() -> None:
    registry: Registry[object] = Registry("gadget")

    @registry.register("fancy")
    class Fancy:
        """Fancy gadget.

        Details.
        """

    assert Fancy.__name__ == "Fancy"
    assert registry.get("fancy") is Fancy
    assert registry.descriptions() == {"fancy": "Fancy gadget."}
    entry = registry.entry("fancy")
    assert isinstance(entry, RegistryEntry)
    assert entry.name == "fancy"


def test_explicit_description_wins() -> None:
    registry: Registry[Widget] = Registry("widget")
    registry.register("w", Widget, description="custom text")
    assert registry.descriptions()["w"] == "custom text"
    registry.register("plain", Widget)
    assert registry.descriptions()["plain"] == "A widget for tests."


def test_registering_a_taken_name_needs_override() -> None:
    registry: Registry[object] = Registry("widget")
    registry.register("w", Widget)
    with pytest.raises(ValueError, match=r"widget name 'w' is already registered.*override=True"):
        registry.register("w", Gadget)
    assert registry.get("w") is Widget
    registry.register("w", Gadget, override=True)
    assert registry.get("w") is Gadget


@pytest.mark.parametrize("bad_name", ["", None, 3])
def test_names_must_be_non_empty_strings(bad_name: object) -> None:
    registry: Registry[Widget] = Registry("widget")
    with pytest.raises(ValueError, match=f"non-empty string, got {bad_name!r}"):
        registry.register(bad_name, Widget)  # type: ignore[arg-type]


def test_factories_must_be_callable() -> None:
    registry: Registry[Widget] = Registry("widget")
    with pytest.raises(TypeError, match="got 42"):
        registry.register("x", 42)  # type: ignore[arg-type]


def test_unknown_name_lists_every_choice() -> None:
    registry: Registry[Widget] = Registry("widget")
    registry.register("beta", Widget)
    registry.register("alpha", Widget)
    with pytest.raises(UnknownNameError) as err:
        registry.get("gamma")
    assert str(err.value) == "Unknown widget 'gamma'. Choose one of: alpha, beta (or register your own)."
    assert isinstance(err.value, ValueError)
    with pytest.raises(UnknownNameError, match="Choose one of: alpha, beta"):
        registry.create("gamma")
    with pytest.raises(UnknownNameError, match=r"Unknown widget \['a'\]"):
        registry.get(["a"])  # type: ignore[arg-type]


def test_unknown_message_can_list_extra_choices_first() -> None:
    registry: Registry[Widget] = Registry("strategy")
    registry.register("ddp", Widget)
    message = registry.unknown_message("ddpp", extra_choices=("auto",))
    assert message == "Unknown strategy 'ddpp'. Choose one of: auto, ddp (or register your own)."


@pytest.mark.parametrize("written", ["DDP", "Ddp", " ddp ", "AUTO"])
def test_unknown_name_is_shown_as_written_and_pointed_at_its_case_insensitive_match(written: str) -> None:
    registry: Registry[Widget] = Registry("strategy")
    registry.register("ddp", Widget)
    message = registry.unknown_message(written, extra_choices=("auto",))
    match = written.strip().lower()
    expected = f"Unknown strategy {written!r} (did you mean {match!r}?). Choose one of: auto, ddp"
    expected += " (or register your own)."
    assert message == expected
    with pytest.raises(UnknownNameError) as err:
        registry.get(written)
    assert f"Unknown strategy {written!r}" in str(err.value)


def test_no_hint_for_names_without_a_case_insensitive_match() -> None:
    registry: Registry[Widget] = Registry("strategy")
    registry.register("ddp", Widget)
    assert "did you mean" not in registry.unknown_message("DDPP")
    assert "did you mean" not in registry.unknown_message(3)


def test_iteration_yields_sorted_names_and_len_counts_them() -> None:
    registry: Registry[Widget] = Registry("widget")
    for name in ("c", "a", "b"):
        registry.register(name, Widget)
    assert list(registry) == ["a", "b", "c"]
    assert registry.names() == ["a", "b", "c"]
    assert len(registry) == 3
    assert repr(registry) == "Registry('widget', names=['a', 'b', 'c'])"


def test_remove_forgets_a_name_and_rejects_unknown_ones() -> None:
    registry: Registry[Widget] = Registry("widget")
    registry.register("a", Widget)
    registry.remove("a")
    assert "a" not in registry
    with pytest.raises(UnknownNameError, match="Unknown widget 'a'"):
        registry.remove("a")


PLUGIN_SOURCE = '''
class PluggedThing:
    """Comes from an entry point."""

    def __init__(self, value=0):
        self.value = value


def register_more(registry):
    registry.register("hooked-a", PluggedThing, value=1)
    registry.register("hooked-b", PluggedThing, value=2, description="second")


NOT_CALLABLE = 3
'''


@pytest.fixture
def plugin_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real installed distribution (a dist-info directory on sys.path) that advertises entry points."""
    module = f"fabric_fake_plugin_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(PLUGIN_SOURCE)
    dist_info = tmp_path / "fabric_fake_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fabric-fake-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(
        textwrap.dedent(
            f"""\
            [fabric.test_things]
            plugged = {module}:PluggedThing
            hooked = {module}:register_more

            [fabric.test_broken]
            missing = {module}:does_not_exist
            not_callable = {module}:NOT_CALLABLE
            ok = {module}:PluggedThing
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield module
    sys.modules.pop(module, None)


def test_entry_points_register_classes_by_name_and_call_hooks(plugin_dist: str) -> None:
    registry: Registry[object] = Registry("thing", entry_point_group="fabric.test_things")
    registry.register("builtin", Widget)
    assert list(registry) == ["builtin", "hooked-a", "hooked-b", "plugged"]
    plugged = registry.create("plugged", value=5)
    assert type(plugged).__module__ == plugin_dist
    assert plugged.value == 5  # type: ignore[attr-defined]
    assert registry.create("hooked-b").value == 2  # type: ignore[attr-defined]
    assert registry.descriptions()["plugged"] == "Comes from an entry point."
    assert registry.descriptions()["hooked-b"] == "second"


def test_entry_points_are_loaded_lazily_on_first_query(plugin_dist: str) -> None:
    registry: Registry[object] = Registry("thing", entry_point_group="fabric.test_things")
    assert plugin_dist not in sys.modules, "creating a registry must not import plugins"
    assert "plugged" in registry
    assert plugin_dist in sys.modules


def test_unknown_name_message_includes_plugin_names(plugin_dist: str) -> None:
    registry: Registry[object] = Registry("thing", entry_point_group="fabric.test_things")
    with pytest.raises(UnknownNameError, match="Choose one of: hooked-a, hooked-b, plugged"):
        registry.get("nope")


def test_broken_entry_points_warn_and_the_rest_still_load(plugin_dist: str) -> None:
    registry: Registry[object] = Registry("thing", entry_point_group="fabric.test_broken")
    with pytest.warns(PossibleUserWarning) as record:
        names = registry.names()
    assert names == ["ok"]
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2
    assert "plugin 'missing'" in messages[0]
    assert "does_not_exist" in messages[0]
    assert "plugin 'not_callable'" in messages[1]
    assert "neither a class nor a registering function" in messages[1]


def test_registry_without_group_never_looks_at_entry_points(plugin_dist: str) -> None:
    registry: Registry[object] = Registry("thing")
    assert list(registry) == []
    assert plugin_dist not in sys.modules


def test_a_plugin_cannot_silently_replace_a_registered_name(plugin_dist: str) -> None:
    registry: Registry[object] = Registry("thing", entry_point_group="fabric.test_things")
    registry.register("plugged", Widget)
    with pytest.warns(PossibleUserWarning, match="plugin 'plugged'.*already registered"):
        assert registry.get("plugged") is Widget


@pytest.fixture
def deferred_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module on ``sys.path`` that nobody has imported yet; it holds ``Widget``-like ``Slow``."""
    name = "fabric_utils_deferred_probe"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            '''
            class Slow:
                """Not this line: a deferred name carries its own description."""

                def __init__(self, size=1):
                    self.size = size
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    yield name
    sys.modules.pop(name, None)


def test_deferred_names_are_listed_without_importing_their_module(deferred_module: str) -> None:
    registry: Registry[object] = Registry("widget")
    registry.register("plain", Widget)
    registry.register_deferred("slow", f"{deferred_module}:Slow", description="Built on first use.", size=3)
    assert registry.names() == ["plain", "slow"]
    assert list(registry) == ["plain", "slow"]
    assert len(registry) == 2
    assert "slow" in registry
    assert registry.descriptions()["slow"] == "Built on first use."
    assert "Choose one of: plain, slow" in registry.unknown_message("slo")
    assert deferred_module not in sys.modules

    built = registry.create("slow", size=5)
    assert deferred_module in sys.modules
    assert type(built).__name__ == "Slow"
    assert built.size == 5
    entry = registry.entry("slow")
    assert entry.factory is sys.modules[deferred_module].Slow
    assert entry.init_kwargs == {"size": 3}
    assert entry.description == "Built on first use."
    assert registry.create("slow").size == 3
    assert registry.names() == ["plain", "slow"]


def test_deferred_names_follow_the_override_rules_and_can_be_removed(deferred_module: str) -> None:
    registry: Registry[object] = Registry("widget")
    registry.register("taken", Widget)
    with pytest.raises(ValueError, match=r"'taken' is already registered .*override=True"):
        registry.register_deferred("taken", f"{deferred_module}:Slow", description="x")
    registry.register_deferred("taken", f"{deferred_module}:Slow", description="x", override=True)
    registry.register_deferred("later", f"{deferred_module}:Slow", description="y")
    with pytest.raises(ValueError, match=rf"'later' is already registered to '{deferred_module}:Slow'"):
        registry.register("later", Widget)
    registry.register("later", Widget, override=True)
    assert registry.get("later") is Widget
    registry.remove("taken")
    assert "taken" not in registry
    assert deferred_module not in sys.modules
    with pytest.raises(UnknownNameError, match=r"Unknown widget 'taken'"):
        registry.get("taken")


@pytest.mark.parametrize("target", ["no_colon_here", ":Slow", "module:", 3])
def test_a_deferred_target_must_name_module_and_attribute(target: object) -> None:
    registry: Registry[object] = Registry("widget")
    with pytest.raises(ValueError, match=r"must read 'package.module:Attribute', got"):
        registry.register_deferred("x", target, description="x")  # type: ignore[arg-type]
    assert "x" not in registry


def test_a_deferred_target_that_does_not_import_raises_when_looked_up() -> None:
    registry: Registry[object] = Registry("widget")
    registry.register_deferred("ghost", "fabric_utils_no_such_module:Thing", description="missing")
    assert registry.names() == ["ghost"]
    with pytest.raises(ModuleNotFoundError, match="fabric_utils_no_such_module"):
        registry.get("ghost")
