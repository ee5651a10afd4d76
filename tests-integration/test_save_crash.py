"""A crash during ``fabric.save`` over an existing checkpoint never leaves a broken checkpoint behind.

``scripts/save_crash.py`` SIGKILLs the saving process at many points of the save (before and after each file
operation it makes: creating the temporary file or staging directory, writing each record or shard, fsync, the
renames that publish the new checkpoint, removing the old one) and then reads what is at the checkpoint path.
Every time it must load, with the default ``weights_only=True``, as the complete previous checkpoint or the
complete new one: every tensor and the plain ``version`` entry agree on one version. For a sharded directory a kill
between its two publishing renames leaves nothing at the path itself; the load then reads the complete hidden sibling
(see ``fabric_io.sharded``), and the next save, whose kill points come next, first puts that one back in place.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

MIN_KILL_POINTS = 10


def run_save_crash(helpers: Any, workdir: Path, kind: str, points: int) -> dict[str, Any]:
    out = workdir / "report.json"
    checkpoints = workdir / "checkpoints"
    checkpoints.mkdir()
    command = [sys.executable, str(helpers.SCRIPTS / "save_crash.py"), kind, "--workdir", str(checkpoints)]
    result = helpers.run_command([*command, "--points", str(points), "--out", str(out)], workdir, timeout=400)
    assert result.returncode == 0, result.describe()
    return json.loads(out.read_text())


def check_report(report: dict[str, Any], *, publish: str) -> None:
    results = report["results"]
    trials = [r for r in results if not r["control"]]
    not_killed = [r for r in trials if not r["killed"]]
    assert not not_killed, f"these saves were not killed at their kill point: {not_killed}"
    assert len(trials) >= MIN_KILL_POINTS, f"only {len(trials)} kill points: {results}"
    # the points cover the whole save: its first file operation, and before and after the step that publishes it
    assert trials[0]["event"] == report["trace"][0][0], trials[0]
    events = {r["event"] for r in trials}
    assert {f"before {publish}", f"after {publish}"} <= events, sorted(events)
    broken = [r for r in results if r["outcome"] not in ("old", "new")]
    assert not broken, "after these kills the checkpoint did not load as the old or the new one:\n" + "\n".join(
        json.dumps(r) for r in broken
    )
    # early kills keep the old checkpoint, kills after publishing leave the new one
    outcomes = [r["outcome"] for r in trials]
    assert "old" in outcomes, outcomes
    assert "new" in outcomes, outcomes
    # the control save (no kill) completes and publishes the new checkpoint
    assert [r["outcome"] for r in results if r["control"]] == ["new"], results


def test_kill_during_single_file_save(helpers: Any, workdir: Path) -> None:
    check_report(run_save_crash(helpers, workdir, "file", points=12), publish="replace")


def test_kill_during_sharded_fsdp_save(helpers: Any, workdir: Path) -> None:
    report = run_save_crash(helpers, workdir, "sharded", points=8)
    assert {r["rank"] for r in report["results"] if r["killed"]} == {0, 1}  # both ranks are killed at some point
    check_report(report, publish="rename")
