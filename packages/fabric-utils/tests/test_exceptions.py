from __future__ import annotations

import warnings

import pytest

from fabric_utils import (
    FabricDeprecationWarning,
    FabricWarning,
    MissingDependencyError,
    PossibleUserWarning,
    UnknownNameError,
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
