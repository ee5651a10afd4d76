import sys
from collections.abc import Callable, Iterator

import pytest

from fabric_testing import MlflowServer, start_mlflow_server
from fabric_utils import TENSORBOARDX, module_available

# Importing tensorboardX sets CRC32C_SW_MODE in os.environ (tensorboardX/crc32c.py). Import it once, before any
# test's hygiene snapshot, so that the first test to build a TensorBoardLogger is not blamed for that variable.
if TENSORBOARDX:
    TENSORBOARDX.require("the fabric-loggers tests")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One real MLflow tracking server (sqlite backend, artifacts in a temp folder) for every test of the session
    that asks for it; started on first use (about 10 s), stopped at the end. Skips where mlflow is missing."""
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server


@pytest.fixture
def hide_module() -> Iterator[Callable[[str], None]]:
    """``hide_module("mlflow")`` makes a module unimportable, as a missing install is, until the test ends (before
    the other fixtures' teardown, which then see the real install again)."""
    hidden: dict[str, object] = {}

    def hide(name: str) -> None:
        hidden.setdefault(name, sys.modules.get(name))
        sys.modules[name] = None  # type: ignore[assignment]
        module_available.cache_clear()

    yield hide
    for name, module in hidden.items():
        if module is None:
            del sys.modules[name]
        else:
            sys.modules[name] = module  # type: ignore[assignment]
    module_available.cache_clear()
