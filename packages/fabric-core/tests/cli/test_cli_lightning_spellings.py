"""Lightning's spellings of the command-line options, errors that name the right option, and ``fabric --version``."""

from __future__ import annotations

from pathlib import Path

import pytest

import fabric_core
from fabric_core.cli import main
from fabric_core.cli.consolidate import consolidate
from fabric_core.cli.run import run


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "train.py"
    path.write_text("print('hi')\n")
    return path


@pytest.mark.parametrize(
    ("lightning", "ours"),
    [
        (["--num_nodes", "2"], ["--num-nodes", "2"]),
        (["--node_rank", "1"], ["--node-rank", "1"]),
        (["--main_address", "10.0.0.7"], ["--main-address", "10.0.0.7"]),
        (["--main_port", "29500"], ["--main-port", "29500"]),
    ],
)
def test_run_accepts_lightnings_underscored_options(lightning: list[str], ours: list[str], script: Path) -> None:
    # a real parse of the command line, as in an existing SLURM job file; nothing is started
    parsed = run.make_context("run", [*lightning, str(script)]).params
    assert parsed == run.make_context("run", [*ours, str(script)]).params
    assert parsed["script_args"] == (str(script),)


def test_consolidate_accepts_lightnings_output_file_option(tmp_path: Path) -> None:
    parsed = consolidate.make_context("consolidate", [str(tmp_path), "--output_file", "model.pt"]).params
    assert parsed == {"checkpoint_dir": str(tmp_path), "output_file": "model.pt"}


@pytest.mark.parametrize(
    "others",
    [[], ["--devices", "1"], ["--accelerator", "cpu", "--devices", "2"], ["--strategy", "ddp", "--devices", "2"]],
)
def test_a_bad_precision_is_blamed_on_precision(
    others: list[str], script: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", *others, "--precision", "bf17", str(script)])
    assert info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("fabric run: error: Invalid value for '--precision': Unknown precision 'bf17'"), error


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fabric {fabric_core.__version__}"
