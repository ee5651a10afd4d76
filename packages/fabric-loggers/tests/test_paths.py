import os
import re
import uuid
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from fabric_loggers._paths import VersionedDirectory, check_folder, check_name, check_version, next_version


def test_check_version():
    assert check_version(None) is None
    assert check_version(0) == 0
    assert check_version("run-a") == "run-a"
    with pytest.raises(ValueError, match="version must be >= 0, got -1"):
        check_version(-1)
    with pytest.raises(TypeError, match=r"got float: 1\.5"):
        check_version(1.5)
    with pytest.raises(TypeError, match="got bool: True"):
        check_version(True)
    with pytest.raises(ValueError, match="non-empty folder name, got ' '"):
        check_version(" ")


def test_check_name():
    assert check_name("exp") == "exp"
    assert check_name("") is None
    assert check_name(None) is None
    with pytest.raises(TypeError, match="got int: 3"):
        check_name(3)


def test_next_version_counts_only_version_folders(tmp_path):
    fs = fsspec.filesystem("file")
    assert next_version(fs, str(tmp_path / "missing")) == 0
    assert next_version(fs, str(tmp_path)) == 0
    for folder in ("version_0", "version_4", "version_x", "other", "version_10b"):
        (tmp_path / folder).mkdir()
    (tmp_path / "version_9").write_text("a file, not a folder")
    assert next_version(fs, str(tmp_path)) == 5


def test_next_version_on_a_url():
    root = f"memory://versions-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    assert next_version(fs, root) == 0
    fs.pipe_file(f"{root}/version_2/metrics.csv", b"step\n")
    fs.pipe_file(f"{root}/notes.txt", b"x")
    assert next_version(fs, root) == 3


def test_local_layout(tmp_path):
    layout = VersionedDirectory(tmp_path, "exp", None, None)
    assert not layout.remote
    assert layout.root_dir == os.path.join(str(tmp_path), "exp")
    assert layout.log_dir == os.path.join(str(tmp_path), "exp", "version_0")
    assert VersionedDirectory(tmp_path, None, "custom", None).log_dir == os.path.join(str(tmp_path), "custom")
    assert VersionedDirectory(f"file://{tmp_path}", "", 7, None).log_dir == os.path.join(str(tmp_path), "version_7")


def test_home_is_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert VersionedDirectory("~/runs", "exp", 1, None).log_dir == str(tmp_path / "runs" / "exp" / "version_1")


def test_url_layout():
    layout = VersionedDirectory("memory://bucket/runs/", "exp", 2, {"skip_instance_cache": True})
    assert layout.remote
    assert layout.root_dir == "memory://bucket/runs/exp"
    assert layout.log_dir == "memory://bucket/runs/exp/version_2"
    assert layout.storage_options == {"skip_instance_cache": True}
    assert isinstance(layout.fs, MemoryFileSystem)


def test_root_dir_type_is_checked():
    with pytest.raises(TypeError, match=r"root_dir must be a str or os\.PathLike, got int: 5"):
        VersionedDirectory(5, "exp", None, None)  # type: ignore[arg-type]
    assert VersionedDirectory(Path("a"), "exp", 0, None).log_dir == os.path.join("a", "exp", "version_0")


@pytest.mark.parametrize(
    ("folder", "reason"),
    [
        ("..", "'..' component"),
        ("../x", "'..' component"),
        ("exp/../../x", "'..' component"),
        ("exp\\..\\..\\x", "'..' component"),
        ("/tmp/x", "absolute path"),
        ("\\x", "absolute path"),
        ("s3://bucket/x", "URL"),
        ("a\0b", "NUL"),
    ],
)
def test_folders_that_leave_the_root_are_refused(folder, reason):
    for what, check in (("name", check_name), ("version", check_version)):
        expected = rf"{what}={re.escape(repr(folder))} would write outside root_dir: .*{reason}"
        with pytest.raises(ValueError, match=expected):
            check(folder)
    with pytest.raises(ValueError, match=r"Use a relative folder such as 'exp' or 'exp/run_1'"):
        check_folder("sub_dir", folder)


@pytest.mark.parametrize("folder", ["exp", "exp/a", "exp/a/b", "./exp", "exp..v2", "..exp", "v1.0", "~"])
def test_relative_folders_that_stay_inside_are_kept(tmp_path, folder):
    assert check_name(folder) == folder
    assert check_version(folder) == folder
    layout = VersionedDirectory(tmp_path, folder, folder, None)
    resolved = os.path.realpath(layout.log_dir)
    assert resolved.startswith(os.path.realpath(tmp_path) + os.sep)
