from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from packaging.version import Version

from fabric_utils import (
    BITSANDBYTES,
    DEEPSPEED,
    FSSPEC,
    MPI4PY,
    NUMPY,
    S3FS,
    TENSORBOARD,
    TENSORBOARDX,
    TORCH_XLA,
    TRANSFORMER_ENGINE,
    MissingDependencyError,
    OptionalDependency,
    module_available,
    package_version,
)

ALL_DEPENDENCIES = {
    "BITSANDBYTES": BITSANDBYTES,
    "DEEPSPEED": DEEPSPEED,
    "FSSPEC": FSSPEC,
    "MPI4PY": MPI4PY,
    "NUMPY": NUMPY,
    "S3FS": S3FS,
    "TENSORBOARD": TENSORBOARD,
    "TENSORBOARDX": TENSORBOARDX,
    "TORCH_XLA": TORCH_XLA,
    "TRANSFORMER_ENGINE": TRANSFORMER_ENGINE,
}


def test_module_available() -> None:
    assert module_available("json")
    assert module_available("torch.nn")
    assert not module_available("fabric_surely_missing_module")
    assert not module_available("json.surely_missing_submodule")
    assert not module_available("fabric_surely_missing_module.sub")


def test_package_version() -> None:
    assert package_version("torch") == Version(torch.__version__)
    assert package_version("fabric-surely-missing-distribution") is None


def test_available_dependency_imports_the_module_on_require() -> None:
    dep = OptionalDependency("json", "packaging")
    assert dep.available
    assert bool(dep)
    assert dep.require("parsing") is json
    assert repr(dep) == "OptionalDependency('json', available=True)"


def test_missing_dependency_names_the_feature_and_the_install_command() -> None:
    dep = OptionalDependency("fabric_missing_mod", "fabric-missing-dist", install="pip install 'fabric-x[extra]'")
    assert not dep
    with pytest.raises(MissingDependencyError) as err:
        dep.require("The frobnicator")
    assert str(err.value) == (
        "The frobnicator requires `fabric-missing-dist`, but it is not installed. Run: pip install 'fabric-x[extra]'"
    )
    assert isinstance(err.value, ImportError)


def test_default_install_command_uses_the_distribution_name() -> None:
    dep = OptionalDependency("fabric_missing_mod", "fabric-missing-dist")
    with pytest.raises(MissingDependencyError, match=r"Run: pip install fabric-missing-dist$"):
        dep.require()


def test_too_old_version_is_reported_with_the_installed_one() -> None:
    installed = package_version("packaging")
    assert installed is not None
    old_enough = OptionalDependency("packaging", min_version=str(installed))
    assert old_enough.available
    too_new = OptionalDependency("packaging", min_version="9999.0")
    assert not too_new.available
    with pytest.raises(MissingDependencyError) as info:
        too_new.require("Something")
    # the command upgrades: a plain `pip install packaging` would keep the old copy
    assert str(info.value) == (
        f"Something requires `packaging>=9999.0`, but only version {installed} is installed."
        " Run: pip install -U 'packaging>=9999.0'"
    )


def test_default_install_command_carries_the_minimum_version() -> None:
    dep = OptionalDependency("fabric_missing_mod", "fabric-missing-dist", min_version="2.1")
    assert dep.install == "pip install 'fabric-missing-dist>=2.1'"
    with pytest.raises(
        MissingDependencyError, match=r"it is not installed\. Run: pip install 'fabric-missing-dist>=2\.1'$"
    ):
        dep.require()


@pytest.mark.parametrize("name", sorted(ALL_DEPENDENCIES))
def test_each_declared_dependency_answers_and_says_how_to_install_it(name: str) -> None:
    dep = ALL_DEPENDENCIES[name]
    assert dep.available == module_available(dep.module)
    assert dep.install.startswith("pip install ")
    if not dep.available:
        with pytest.raises(MissingDependencyError, match=f"Run: {re.escape(dep.install)}$"):
            dep.require()


def test_heavy_extras_name_the_fabric_extra_that_brings_them() -> None:
    assert DEEPSPEED.install == "pip install 'fabric-strategies[deepspeed]'"
    assert TENSORBOARDX.install == "pip install 'fabric-loggers[tensorboard]'"
    assert TRANSFORMER_ENGINE.distribution == "transformer-engine"


def test_importing_fabric_utils_imports_no_optional_dependency() -> None:
    code = (
        "import sys, fabric_utils\n"
        "heavy = ['deepspeed', 'torch_xla', 'tensorboardX', 's3fs', 'bitsandbytes', 'transformer_engine', 'mpi4py',\n"
        " 'packaging.version']\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def test_names_on_access_import_their_module_on_first_use(monkeypatch):
    import types

    from fabric_utils import names_on_access

    package = types.ModuleType("lazy_pkg")
    monkeypatch.setitem(sys.modules, "lazy_pkg", package)
    monkeypatch.delitem(sys.modules, "json.decoder", raising=False)
    package.__getattr__, package.__dir__ = names_on_access("lazy_pkg", {"JSONDecoder": "json.decoder"})

    assert "JSONDecoder" in dir(package)
    assert "json.decoder" not in sys.modules  # listing the name imports nothing
    decoder = package.JSONDecoder
    assert decoder is sys.modules["json.decoder"].JSONDecoder
    assert vars(package)["JSONDecoder"] is decoder  # stored: the next access is a plain attribute
    with pytest.raises(AttributeError, match="module 'lazy_pkg' has no attribute 'missing'"):
        package.missing  # noqa: B018
