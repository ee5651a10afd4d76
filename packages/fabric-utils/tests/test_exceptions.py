from __future__ import annotations

import warnings

import pytest

from fabric_utils import (
    FabricDeprecationWarning,
    FabricWarning,
    MissingDependencyError,
    PossibleUserWarning,
    UnknownNameError,
    disable_possible_user_warnings,
)


def test_error_hierarchy_lets_callers_catch_the_builtin_kinds() -> None:
    assert issubclass(UnknownNameError, ValueError)
    assert issubclass(MissingDependencyError, ModuleNotFoundError)
    assert issubclass(MissingDependencyError, ImportError)
    with pytest.raises(ValueError, match="bad name"):
        raise UnknownNameError("bad name")


def test_warning_categories_can_be_filtered_together() -> None:
    assert issubclass(PossibleUserWarning, FabricWarning)
    assert issubclass(FabricWarning, UserWarning)
    assert issubclass(FabricDeprecationWarning, DeprecationWarning)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always", UserWarning)
        warnings.simplefilter("ignore", FabricWarning)  # inserted first: it wins for fabric's warnings
        warnings.warn("hidden", PossibleUserWarning, stacklevel=1)
        warnings.warn("shown", UserWarning, stacklevel=1)
    assert [str(w.message) for w in record] == ["shown"]


def test_disable_possible_user_warnings_everywhere_or_in_some_modules() -> None:
    def shown_after(module: str) -> list[str]:
        with warnings.catch_warnings(record=True) as record:  # restores the filters afterwards
            warnings.simplefilter("always")
            disable_possible_user_warnings(module)
            for name in ("fabric_core.data", "my_script"):
                warnings.warn_explicit("possible", PossibleUserWarning, "f.py", 1, module=name)
            warnings.warn_explicit("other", UserWarning, "f.py", 1, module="fabric_core.data")
        return [f"{w.message}" for w in record]

    assert shown_after("") == ["other"]
    assert shown_after("fabric_core") == ["possible", "other"]  # my_script's possible warning still shows
    with pytest.raises(TypeError, match="got None"):
        disable_possible_user_warnings(None)  # type: ignore[arg-type]
