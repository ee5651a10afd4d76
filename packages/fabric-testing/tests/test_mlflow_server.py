"""``start_mlflow_server`` starts a real MLflow tracking server that stores runs and artifacts, and leaves no process
behind when it stops."""

from __future__ import annotations

import os
import socket
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fabric_testing import MlflowServer, child_pids, start_mlflow_server
from fabric_testing.mlflow_server import missing_mlflow_server


def test_the_server_stores_runs_and_artifacts_and_stops_with_its_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    before = child_pids()
    started = time.monotonic()
    with start_mlflow_server(tmp_path / "server") as server:
        print(f"mlflow server answered /health after {time.monotonic() - started:.1f}s")
        assert isinstance(server, MlflowServer)
        assert server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{server.url}/health", timeout=10) as response:
            assert response.read().decode().strip() == "OK"
        from mlflow.tracking import MlflowClient

        client = MlflowClient(server.url)
        run = client.create_run(client.create_experiment("fixture-check"))
        client.log_metric(run.info.run_id, "x", 2.0, step=3)
        (tmp_path / "note.txt").write_text("hello")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
        assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "x")] == [(3, 2.0)]
        assert [p.read_text() for p in server.artifacts.rglob("note.txt")] == ["hello"]
        assert (server.root / "mlflow.db").is_file()
        group = [pid for pid in _all_pids() if _process_group(pid) == server.pid]
        assert server.pid in group
    for pid in group:
        assert not os.path.exists(f"/proc/{pid}") or _state(pid) == "Z"
    assert child_pids() == before
    port = int(server.url.rsplit(":", 1)[1])
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nobody listens there any more
    assert "Traceback" not in server.logs()


def test_without_mlflow_the_test_is_skipped_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what a missing install looks like to the import system
    assert "pip install mlflow" in (missing_mlflow_server() or "")
    with pytest.raises(pytest.skip.Exception, match="pip install mlflow"), start_mlflow_server(tmp_path):
        pytest.fail("the block must not run")
    assert list(tmp_path.iterdir()) == []


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _stat_fields(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _process_group(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[2]) if fields else -1


def _state(pid: int) -> str:
    fields = _stat_fields(pid)
    return fields[0] if fields else "X"
