"""SubprocessScriptLauncher: real scripts, run again for local rank 1, watched, and never left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fabric_environments import LightningEnvironment
from fabric_strategies import SubprocessScriptLauncher
from fabric_strategies.launchers.subprocess_script import ChildObserver, process_variables, script_command
from fabric_testing import child_pids

TIMEOUT = 120  # a hang fails the test here instead of blocking the suite

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    from fabric_environments import LightningEnvironment
    from fabric_strategies import SubprocessScriptLauncher

    mode, out_dir = sys.argv[1], sys.argv[2]

    def work():
        rank = int(os.environ.get("LOCAL_RANK", "0"))
        keys = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK", "RANK")
        record = {key: os.environ.get(key) for key in keys}
        record.update(pid=os.getpid(), argv=sys.argv, warnoptions=sys.warnoptions)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(record, f)
        if mode == "child_fails" and rank == 1:
            raise ValueError("boom from rank 1")
        if mode == "parent_fails" and rank == 0:
            while not os.path.exists(os.path.join(out_dir, "rank1.json")):
                time.sleep(0.05)
            raise RuntimeError("boom from rank 0")
        if mode != "ok":
            time.sleep(600)  # only a stopped process ends this
        return rank

    launcher = SubprocessScriptLauncher(LightningEnvironment(), num_processes=2, num_nodes=1)
    print("RESULT", launcher.launch(work), flush=True)
    """
)


def _write_script(tmp_path: Path) -> Path:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    return script


def _clean_env() -> dict[str, str]:
    # the launched run must not inherit rank variables from whatever started the test session
    drop = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_PORT", "GROUP_RANK", "LOCAL_WORLD_SIZE")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _read(out_dir: Path, rank: int) -> dict:
    return json.loads((out_dir / f"rank{rank}.json").read_text())


def _is_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _wait_until_gone(pid: int, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _is_gone(pid):
            return True
        time.sleep(0.1)
    return False


def test_children_run_the_script_again_with_the_run_environment(tmp_path):
    script = _write_script(tmp_path)
    cmd = [sys.executable, "-W", "ignore::DeprecationWarning", str(script), "ok", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=_clean_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("RESULT") == 2  # the parent prints 0, the child 1
    parent, child = _read(tmp_path, 0), _read(tmp_path, 1)
    assert (parent["LOCAL_RANK"], child["LOCAL_RANK"]) == ("0", "1")
    assert (parent["RANK"], child["RANK"]) == ("0", "1")
    assert parent["WORLD_SIZE"] == child["WORLD_SIZE"] == "2"
    assert parent["NODE_RANK"] == child["NODE_RANK"] == "0"
    assert parent["MASTER_PORT"] == child["MASTER_PORT"]
    assert int(child["MASTER_PORT"]) > 0
    assert child["argv"] == [str(script), "ok", str(tmp_path)]
    assert "ignore::DeprecationWarning" in child["warnoptions"]
    assert _is_gone(child["pid"])


def test_a_failing_child_stops_the_run_and_its_error_is_shown(tmp_path):
    script = _write_script(tmp_path)
    proc = subprocess.run(
        [sys.executable, str(script), "child_fails", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,  # rank 0 sleeps 600 s: only the observer ends it in time
        env=_clean_env(),
    )
    assert proc.returncode == 1
    assert "ValueError: boom from rank 1" in proc.stderr
    assert "local rank 1 failed first: it exited with exit code 1" in proc.stderr
    assert _is_gone(_read(tmp_path, 1)["pid"])


def test_a_failing_parent_stops_its_children(tmp_path):
    script = _write_script(tmp_path)
    proc = subprocess.run(
        [sys.executable, str(script), "parent_fails", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=_clean_env(),
    )
    assert proc.returncode == 1
    assert "RuntimeError: boom from rank 0" in proc.stderr
    assert _wait_until_gone(_read(tmp_path, 1)["pid"])


def test_children_die_when_the_parent_is_killed(tmp_path):
    script = _write_script(tmp_path)
    parent = subprocess.Popen(
        [sys.executable, str(script), "hang", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_clean_env(),
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (tmp_path / "rank1.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        child_pid = _read(tmp_path, 1)["pid"]
        assert not _is_gone(child_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(TIMEOUT)
        assert _wait_until_gone(child_pid)
    finally:
        parent.kill()
        parent.wait()


def test_a_module_run_with_dash_m_is_run_again_as_a_module(tmp_path):
    (tmp_path / "launchmod.py").write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-m", "launchmod", "ok", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=_clean_env(),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert _read(tmp_path, 1)["argv"] == [str(tmp_path / "launchmod.py"), "ok", str(tmp_path)]


def test_script_command_refuses_where_there_is_no_script(monkeypatch):
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None)
    monkeypatch.setattr(sys, "argv", ["-c"])
    with pytest.raises(RuntimeError, match=r"ddp_spawn"):
        script_command()


def test_script_command_keeps_interpreter_options(monkeypatch, tmp_path):
    script = tmp_path / "x.py"
    script.write_text("")
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None)
    monkeypatch.setattr(sys, "argv", [str(script), "--lr", "1"])
    monkeypatch.setattr(sys, "orig_argv", ["python", "-X", "faulthandler", str(script), "--lr", "1"])
    assert script_command() == [sys.executable, "-X", "faulthandler", str(script), "--lr", "1"]


def test_process_variables_describe_each_local_process(monkeypatch):
    monkeypatch.setenv("MASTER_PORT", "12345")
    monkeypatch.setenv("NODE_RANK", "1")
    variables = process_variables(LightningEnvironment(), local_rank=1, num_processes=2, num_nodes=2)
    assert variables == {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "12345",
        "NODE_RANK": "1",
        "LOCAL_RANK": "1",
        "RANK": "3",
        "WORLD_SIZE": "4",
    }


def test_invalid_process_counts_are_rejected():
    with pytest.raises(ValueError, match=r"num_processes.*0"):
        SubprocessScriptLauncher(LightningEnvironment(), num_processes=0, num_nodes=1)
    assert not SubprocessScriptLauncher(LightningEnvironment(), 1, 1).is_interactive_compatible


def test_observer_stops_the_others_when_one_fails():
    failing = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    sleeping = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    reported: list[tuple[int, int]] = []
    observer = ChildObserver({1: failing, 2: sleeping}, lambda rank, code: reported.append((rank, code)))
    observer.start()
    observer.join(TIMEOUT)
    assert reported == [(1, 3)]
    assert sleeping.poll() is not None
    assert not child_pids() & {failing.pid, sleeping.pid}
