"""Callbacks: hooks get only the keyword arguments they accept; entry-point callbacks are added."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from fabric_core.callbacks import HookCaller, collect_callbacks, entry_point_callbacks


class Narrow:
    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def on_step(self, step: int) -> None:
        self.seen.append((step,))


class Wide:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def on_step(self, **kwargs: Any) -> None:
        self.seen.append(kwargs)


class Positional:
    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def on_step(self, first: Any, *, loss: float = 0.0) -> None:
        self.seen.append((first, loss))


def test_each_hook_gets_the_keywords_it_accepts() -> None:
    narrow, wide, positional = Narrow(), Wide(), Positional()
    caller = HookCaller()
    caller.call([narrow, wide, object()], "on_step", step=3, loss=0.5)
    assert narrow.seen == [(3,)]
    assert wide.seen == [{"step": 3, "loss": 0.5}]
    with pytest.raises(TypeError):  # `first` is required: positional arguments are passed as given
        caller.call([positional], "on_step", loss=1.0)
    caller.call([positional], "on_step", "x", loss=1.0, step=9)
    assert positional.seen == [("x", 1.0)]


def test_a_hook_that_is_not_callable_is_skipped_with_a_warning() -> None:
    class Odd:
        on_step = 3

    with pytest.warns(UserWarning, match=r"Odd\.on_step"):
        HookCaller().call([Odd()], "on_step", step=1)


def test_hook_signatures_are_inspected_once_per_function() -> None:
    caller = HookCaller()
    first, second = Narrow(), Narrow()
    assert caller.accepted_keywords(first.on_step) == frozenset({"step"})
    assert Narrow.on_step in caller._accepted
    assert caller.accepted_keywords(second.on_step) == frozenset({"step"})
    assert caller.accepted_keywords(Wide().on_step) is None


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real installed distribution (a dist-info directory on sys.path) publishing fabric.callbacks entry points."""
    package = tmp_path / "demo_fabric_plugin.py"
    package.write_text(
        textwrap.dedent(
            """
            class Announcer:
                def on_train_start(self, fabric=None):
                    self.started = True

            class Counter:
                pass

            def make_callbacks():
                return [Announcer(), Counter()]

            def broken():
                raise RuntimeError("plugin exploded")
            """
        )
    )
    info = tmp_path / "demo_fabric_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-fabric-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[fabric.callbacks]\ndemo = demo_fabric_plugin:make_callbacks\nbad = demo_fabric_plugin:broken\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("demo_fabric_plugin", None)


def test_entry_point_callbacks_are_added_and_broken_ones_reported(installed_plugin: Path) -> None:
    with pytest.warns(UserWarning, match="plugin exploded"):
        found = entry_point_callbacks()
    assert sorted(type(c).__name__ for c in found) == ["Announcer", "Counter"]


def test_user_callbacks_win_over_entry_point_callbacks_of_the_same_type(
    installed_plugin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import demo_fabric_plugin  # type: ignore[import-not-found]

    mine = demo_fabric_plugin.Counter()
    with pytest.warns(UserWarning, match="plugin exploded"):
        callbacks = collect_callbacks(mine)
    assert callbacks[0] is mine
    assert [type(c).__name__ for c in callbacks] == ["Counter", "Announcer"]
    monkeypatch.setenv("FABRIC_DISABLE_ENTRY_POINT_CALLBACKS", "1")
    assert collect_callbacks([mine]) == [mine]


def test_no_plugins_means_only_the_users_callbacks() -> None:
    narrow = Narrow()
    assert collect_callbacks(None) == []
    assert collect_callbacks(narrow) == [narrow]
    assert collect_callbacks((narrow,)) == [narrow]
