"""``fabric migrate``: a Lightning Fabric codebase rewritten to fabric's packages, as a user would run it."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fabric_core.cli import main

LIGHTNING_SCRIPT = textwrap.dedent(
    '''\
    """Train a tiny model with Lightning Fabric."""
    import os

    import torch
    import lightning as L
    import lightning.fabric as lf
    from lightning.fabric import Fabric as F, seed_everything
    from lightning.fabric.strategies import (
        DDPStrategy,  # the one we use on the cluster
        FSDPStrategy,
    )
    from lightning.fabric.utilities.seed import pl_worker_init_function
    from lightning.fabric.utilities.cloud_io import _load
    from lightning_fabric.plugins import MixedPrecision, TorchCheckpointIO


    def make_fabric(strategy: "lf.strategies.Strategy") -> "F":
        print("lightning.fabric.Fabric builds", os.getpid())
        return L.Fabric(accelerator="cpu", strategy=L.fabric.strategies.SingleDeviceStrategy(device="cpu"))


    def sharded() -> lf.strategies.Strategy:
        return lf.strategies.FSDPStrategy(sharding_strategy="FULL_SHARD")


    class Model(L.LightningModule):
        pass
    '''
)

EXPECTED_SCRIPT = textwrap.dedent(
    '''\
    """Train a tiny model with Lightning Fabric."""
    import os

    import torch
    import fabric_strategies
    import fabric_core
    import lightning as L
    import lightning.fabric as lf
    from fabric_core import Fabric as F
    from fabric_utils import seed_everything
    from fabric_strategies import (
        DDPStrategy,  # the one we use on the cluster
        FSDPStrategy,
    )
    from fabric_utils import seed_worker as pl_worker_init_function
    from lightning.fabric.utilities.cloud_io import _load
    from fabric_precision import MixedPrecision
    from fabric_io import TorchCheckpointIO


    def make_fabric(strategy: "lf.strategies.Strategy") -> "F":
        print("lightning.fabric.Fabric builds", os.getpid())
        return fabric_core.Fabric(accelerator="cpu", strategy=fabric_strategies.SingleDeviceStrategy(device="cpu"))


    def sharded() -> fabric_strategies.Strategy:
        return fabric_strategies.FSDPStrategy(sharding_strategy="FULL_SHARD")


    class Model(L.LightningModule):
        pass
    '''
)


def migrate(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(["migrate", *args])
    assert isinstance(info.value.code, int)
    return info.value.code


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "train.py").write_text(LIGHTNING_SCRIPT)
    (tmp_path / "pkg" / "plain.py").write_text("import os  \nprint('lightning.fabric', os.sep)\n")
    (tmp_path / "pkg" / "notes.txt").write_text("from lightning.fabric import Fabric\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "hidden.py").write_text("from lightning.fabric import Fabric\n")
    return tmp_path


def test_diff_mode_prints_the_rewrite_and_touches_nothing(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = {path: path.read_bytes() for path in project.rglob("*") if path.is_file()}
    train = project / "pkg" / "train.py"
    assert migrate(str(project), str(train)) == 1  # a file given twice is shown once
    out, err = capsys.readouterr()
    assert out.count(f"--- {train}\n") == 1
    assert out.startswith(f"--- {train}\n+++ {train}\n@@ ")
    assert "\n-from lightning.fabric.strategies import (\n" in out
    assert "\n+from fabric_strategies import (\n" in out
    assert "plain.py" not in out
    assert "hidden.py" not in out
    assert "notes.txt" not in out
    assert {path: path.read_bytes() for path in project.rglob("*") if path.is_file()} == before
    # every name without a counterpart, where it is, and what to use instead
    assert err.splitlines() == [
        f"{train}:13: cannot map lightning.fabric.utilities.cloud_io._load (no counterpart; closest: "
        "fabric_io.load_sharded_checkpoint)",
        f"{train}:26: cannot map lightning.LightningModule (part of Lightning, not of Lightning Fabric: left as it is)",
    ]


def test_write_rewrites_lightning_code_and_leaves_the_rest_byte_identical(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = (project / "pkg" / "plain.py").read_bytes()
    assert migrate("--write", str(project)) == 0
    assert (project / "pkg" / "train.py").read_text() == EXPECTED_SCRIPT
    assert (project / "pkg" / "plain.py").read_bytes() == plain
    assert (project / ".venv" / "hidden.py").read_text() == "from lightning.fabric import Fabric\n"
    assert f"rewrote {project / 'pkg' / 'train.py'}" in capsys.readouterr().err
    # a second run finds nothing left to change
    assert migrate(str(project)) == 0
    assert capsys.readouterr().out == ""


def test_the_rewritten_script_imports_and_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for seed_variable in ("FABRIC_GLOBAL_SEED", "FABRIC_SEED_WORKERS"):  # seed_everything sets them
        monkeypatch.setenv(seed_variable, "")  # so that monkeypatch restores the variable's absence
        monkeypatch.delenv(seed_variable)
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """\
            import torch
            import lightning as L
            import lightning_fabric
            from lightning.fabric.utilities.seed import pl_worker_init_function, seed_everything as seed


            def main() -> float:
                seed(7)
                strategy = lightning_fabric.strategies.SingleDeviceStrategy(device="cpu")
                fabric = L.Fabric(accelerator="cpu", devices=1, strategy=strategy)
                model = torch.nn.Linear(4, 1)
                model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
                loss = model(torch.ones(8, 4)).pow(2).mean()
                fabric.backward(loss)
                optimizer.step()
                assert callable(pl_worker_init_function)
                return loss.item()
            """
        )
    )
    assert migrate("--write", str(script)) == 0
    rewritten = script.read_text()
    assert "lightning" not in rewritten.replace("pl_worker_init_function", "")
    namespace: dict[str, object] = {}
    exec(compile(rewritten, str(script), "exec"), namespace)
    loss = namespace["main"]()  # type: ignore[operator]
    assert isinstance(loss, float)
    assert loss > 0


def test_aliases_and_attribute_chains_through_every_spelling(tmp_path: Path) -> None:
    script = tmp_path / "chains.py"
    script.write_text(
        "import lightning.fabric\n"
        "from lightning import fabric\n"
        "from lightning.fabric.plugins import environments as envs\n"
        "import lightning_fabric as LF\n"
        "a = lightning.fabric.Fabric(devices=1)\n"
        "b = fabric.accelerators.CPUAccelerator()\n"
        "c = envs.SLURMEnvironment; d = LF.Fabric.seed_everything\n"
        "if a: import lightning.fabric as q; q.Fabric()\n"
        "def f():\n"
        "    import lightning.fabric.utilities as lfu\n"
        "    return lfu.rank_zero_only, lfu.types.ReduceOp\n"
    )
    assert migrate("--write", str(script)) == 0
    assert script.read_text() == (
        "import fabric_core\n"
        "import fabric_accelerators\n"
        "import fabric_environments\n"
        "a = fabric_core.Fabric(devices=1)\n"
        "b = fabric_accelerators.CPUAccelerator()\n"
        "c = fabric_environments.SLURMEnvironment; d = fabric_core.Fabric.seed_everything\n"
        "if a: import fabric_core; fabric_core.Fabric()\n"
        "def f():\n"
        "    import fabric_utils\n"
        "    return fabric_utils.rank_zero_only, fabric_utils.ReduceOp\n"
    )


def test_a_file_that_does_not_parse_is_skipped_and_a_star_import_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("from lightning.fabric import Fabric\ndef f(:\n")
    good = tmp_path / "good.py"
    good.write_bytes(b"from lightning.fabric import *\r\nfrom lightning.fabric import Fabric\r\n")
    assert migrate("--write", str(tmp_path)) == 1
    assert good.read_bytes() == b"from lightning.fabric import *\r\nfrom fabric_core import Fabric\r\n"
    assert broken.read_text() == "from lightning.fabric import Fabric\ndef f(:\n"
    err = capsys.readouterr().err
    assert f"{broken}: skipped: cannot parse line 2" in err
    assert f"{good}:1: cannot map lightning.fabric.* (a star import: import the names you use by name" in err


def test_usage_errors_exit_with_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert migrate() == 2
    assert "Missing argument 'PATH...'" in capsys.readouterr().err
    assert migrate(str(tmp_path / "nowhere.py")) == 2
    assert "nowhere.py' does not exist" in capsys.readouterr().err


def _fabric_command(*args: str, code: str = "") -> subprocess.CompletedProcess[str]:
    probe = f"import sys\n{code}\nfrom fabric_core.cli import main\nmain({list(args)!r})"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)


def test_without_libcst_the_command_says_how_to_install_it(tmp_path: Path) -> None:
    result = _fabric_command("migrate", str(tmp_path), code="sys.modules['libcst'] = None  # as if not installed")
    assert result.returncode == 2
    assert "pip install 'fabric-core[migrate]'" in result.stderr


def test_the_command_line_loads_libcst_only_when_migrate_runs() -> None:
    result = _fabric_command("--help", code="import atexit; atexit.register(lambda: print('libcst' in sys.modules))")
    assert result.returncode == 0, result.stderr
    assert "migrate" in result.stdout
    assert result.stdout.strip().endswith("False")


MIGRATING_GUIDE = Path(__file__).resolve().parents[4] / "docs" / "guide" / "migrating.md"


def test_the_tool_moves_each_name_where_the_migration_guide_says() -> None:
    from fabric_core.cli.migrate import RENAMED, NameTable, Target

    table = NameTable.from_installed()
    guide = MIGRATING_GUIDE.read_text()
    rows = re.findall(r"^\| `(lightning\.fabric[\w.]*)` \(([^)]*)\) \| `(fabric_\w+)` \|$", guide, flags=re.MULTILINE)
    assert len(rows) >= 10
    for module, names, package in rows:
        for name in re.findall(r"`(\w+)`", names):
            assert table.lookup(f"{module}.{name}") == Target(package, name), (module, name)
    prose = " ".join(guide.split())
    for lightning_name, (package, ours) in RENAMED.items():
        assert f"`{lightning_name}` → `{package}.{ours}`" in prose
