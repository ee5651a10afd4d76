"""The pytest plugin (entry point ``pytest11``): markers, hardware selection, hygiene fixtures and ``small_disk``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric_testing.disk import small_filesystem
from fabric_testing.hygiene import Snapshot, check_and_restore
from fabric_testing.slurm import SlurmCluster, start_slurm_cluster

HARDWARE_MARKERS = ("cuda", "xla", "mps")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fabric")
    group.addoption(
        "--hardware",
        choices=("cpu", *HARDWARE_MARKERS),
        default=None,
        help="run only the tests marked for this hardware (cpu: the tests that need none)",
    )
    group.addoption("--no-hygiene", action="store_true", help="do not check for leaked env vars/threads/processes")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs CUDA GPUs (run by the tests_cuda session)")
    config.addinivalue_line("markers", "xla: needs an XLA device (run by the tests_xla session)")
    config.addinivalue_line("markers", "mps: needs Apple MPS")
    config.addinivalue_line("markers", "standalone: must run in its own process (FABRIC_RUN_STANDALONE_TESTS=1)")
    config.addinivalue_line("markers", "hygiene_exempt: do not check this test for leaks")
    config.addinivalue_line(
        "markers", "fabric_requires(check, reason): skip unless check() is true when the test is about to run"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("fabric_requires"):
        check, reason = marker.args
        if not check():
            pytest.skip(reason)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    hardware = config.getoption("--hardware")
    if hardware is None:
        return
    selected: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        marks = {m for m in HARDWARE_MARKERS if item.get_closest_marker(m) is not None}
        keep = (not marks) if hardware == "cpu" else hardware in marks
        (selected if keep else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


@pytest.fixture(autouse=True)
def fabric_hygiene(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaks environment variables, threads, child processes or a process group."""
    if request.config.getoption("--no-hygiene") or request.node.get_closest_marker("hygiene_exempt"):
        yield
        return
    before = Snapshot.take()
    yield
    problems = check_and_restore(before)
    if problems:
        pytest.fail("test hygiene: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A directory on a real 2 MiB filesystem (a tmpfs mounted for the test): writing more there fails with
    ``ENOSPC``. Skips where mounting is not permitted (see ``fabric_testing.small_filesystem``)."""
    with small_filesystem(tmp_path / "small-disk", "2m") as directory:
        yield directory


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A real single-node Slurm cluster (munged, slurmctld, slurmd) for the whole session, stopped at its end.
    Skips where it cannot start (not root, Slurm not installed; see ``fabric_testing.start_slurm_cluster``)."""
    with start_slurm_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster
