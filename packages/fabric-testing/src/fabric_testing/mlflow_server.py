"""A real MLflow tracking server on 127.0.0.1 for tests: a sqlite backend and an artifact folder in one directory.

The server runs as a child of the test process, in its own session, on a free port, with one worker, telemetry off
and no job runner; the block waits until it answers ``/health`` (about 10 s on a small machine: the first start
creates the sqlite schema) and stops the whole process group at its end. Needs the full ``mlflow`` package
(``mlflow-skinny`` has no server); elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from fabric_testing.launcher import find_free_port

#: what the server and its clients need in the environment: no usage data is sent (it also shortens client calls)
MLFLOW_QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true"}
#: what only the server needs: no job runner (a third Python process importing MLflow, with Huey consumers, for MLflow's
#: GenAI jobs, which the tracking API does not use): it competed with the server's own start for the CPU, about 6 s of
#: its ~15 s on a 2-core machine
MLFLOW_SERVER_ENV = {**MLFLOW_QUIET_ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@dataclass(frozen=True)
class MlflowServer:
    """A running server (see :func:`start_mlflow_server`): pass :attr:`url` as the tracking URI."""

    url: str
    root: Path
    pid: int

    @property
    def artifacts(self) -> Path:
        """The folder where the server stores the artifacts that clients upload."""
        return self.root / "artifacts"

    def logs(self, tail: int = 4000) -> str:
        """The end of the server's output, for failure messages."""
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else "(no output)"


def missing_mlflow_server() -> str | None:
    """Why no server can start here (mlflow missing, or only mlflow-skinny), or ``None`` when one can."""
    from importlib.util import find_spec

    if find_spec("mlflow") is None:
        return "MLflow is not installed: `pip install mlflow` (the full package; mlflow-skinny has no server)"
    if find_spec("mlflow.server") is None or find_spec("flask") is None:
        return "only mlflow-skinny is installed, which has no tracking server: `pip install mlflow`"
    return None


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def start_mlflow_server(directory: str | os.PathLike[str], *, timeout: float = 180) -> Iterator[MlflowServer]:
    """Start ``mlflow server`` on a free port of 127.0.0.1 with ``directory/mlflow.db`` as its backend and
    ``directory/artifacts`` for uploaded artifacts; stop it (SIGTERM to its process group, SIGKILL after 10 s)
    when the block ends. Fails the test with the server's output when it exits early or does not answer
    ``/health`` within ``timeout`` seconds; skips it, with the reason, where MLflow's server is not installed.
    """
    reason = missing_mlflow_server()
    if reason is not None:
        pytest.skip(reason)
    root = Path(directory).resolve()
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    port = find_free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
    ]
    env = {**os.environ, **MLFLOW_SERVER_ENV}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(root / "server.log", "wb") as out:
        process = subprocess.Popen(
            command, cwd=root, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = MlflowServer(url=f"http://127.0.0.1:{port}", root=root, pid=process.pid)
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(server.url):
            if process.poll() is not None:
                pytest.fail(f"mlflow server exited with {process.returncode} before answering:\n{server.logs()}")
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer {server.url}/health within {timeout}s:\n{server.logs()}")
            time.sleep(0.25)
        yield server
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group and reap the server (SIGKILL after 10 s); then SIGKILL what is left of the
    group (a worker still shutting down), so that nothing outlives the block."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
