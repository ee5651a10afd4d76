"""Freezes the public surface of fabric_testing: a change here is a deliberate API change (update the CHANGELOG)."""

from __future__ import annotations

from importlib.metadata import entry_points, version

import fabric_testing

EXPECTED = [
    "STANDALONE_ENV",
    "DistributedTestError",
    "MlflowServer",
    "PicklePayload",
    "RandomDataset",
    "RandomLabelledDataset",
    "RunIf",
    "SlurmCluster",
    "Snapshot",
    "TinyConvNet",
    "TinyMLP",
    "check_and_restore",
    "child_pids",
    "destroy_process_group_cleanly",
    "find_free_port",
    "preload_in_fork_server",
    "run_processes",
    "small_filesystem",
    "start_mlflow_server",
    "start_slurm_cluster",
]


def test_all_is_frozen() -> None:
    assert sorted(fabric_testing.__all__) == sorted(EXPECTED)
    assert len(set(fabric_testing.__all__)) == len(fabric_testing.__all__)


def test_every_public_name_exists() -> None:
    for name in fabric_testing.__all__:
        assert hasattr(fabric_testing, name), name
        assert not name.startswith("_"), name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from fabric_testing import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(EXPECTED)


def test_version_and_pytest_entry_point() -> None:
    assert fabric_testing.__version__ == version("fabric-testing")
    plugins = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert plugins.get("fabric_testing") == "fabric_testing.plugin"
