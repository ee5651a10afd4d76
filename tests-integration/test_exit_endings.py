"""The ways a DDP script started by torchrun can end all exit cleanly: no hang, no abort, no error at exit (#20).

Scripts written for plain PyTorch end their process group themselves; Fabric's exit teardown must cope with that,
whether the script does it at its end or in an exit handler of its own. Each case is one run of the strategies'
teardown proof (``packages/fabric-strategies/tests/exit_endings_loop.py``, which runs them 100 times each under CPU
load): a run that does not end within its watchdog is a hang, and the loop dumps every rank's stacks before killing it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

LOOP = Path(__file__).parents[1] / "packages" / "fabric-strategies" / "tests" / "exit_endings_loop.py"


@pytest.mark.parametrize("ending", ["destroy", "barrier", "nothing", "sys-exit", "destroy-in-atexit"])
def test_a_torchrun_script_exits_cleanly_however_it_ends(helpers: Any, tmp_path: Path, ending: str) -> None:
    command = [sys.executable, str(LOOP), "--runs", "1", "--busy", "0", "--steps", "20", "--watchdog", "240"]
    command += ["--endings", ending, "--raw-endings", "--stacks-dir", str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=helpers.command_environment())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"fabric {ending}: 1 runs, 1 ok, 0 hang, 0 abort, 0 error" in proc.stdout, proc.stdout + proc.stderr
