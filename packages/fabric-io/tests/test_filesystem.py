from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.utils import get_protocol
from hypothesis import given
from hypothesis import strategies as st

from fabric_io import exists, get_filesystem, is_remote_path, isdir, join_path, makedirs, remove_path
from fabric_io.filesystem import local_path, path_protocol
from fabric_utils import MissingDependencyError, module_available

if TYPE_CHECKING:
    from conftest import Storage


@pytest.mark.parametrize(
    ("path", "remote"),
    [
        ("/tmp/ckpt.pt", False),
        ("relative/ckpt.pt", False),
        (Path("/tmp/ckpt.pt"), False),
        ("file:///tmp/ckpt.pt", False),
        ("local:///tmp/ckpt.pt", False),
        ("s3://bucket/ckpt.pt", True),
        ("memory://ckpt.pt", True),
        ("simplecache::s3://bucket/ckpt.pt", True),
    ],
)
def test_is_remote_path(path: str | Path, remote: bool) -> None:
    assert is_remote_path(path) is remote


def test_local_path_strips_the_file_protocol_and_refuses_urls() -> None:
    assert local_path("file:///tmp/ckpt.pt") == "/tmp/ckpt.pt"
    assert local_path(Path("a/b")) == os.path.join("a", "b")
    with pytest.raises(ValueError, match=r"s3://bucket/x"):
        local_path("s3://bucket/x")


def test_join_path_local_and_urls(tmp_path: Path) -> None:
    assert join_path(tmp_path, "a", "b.pt") == os.path.join(str(tmp_path), "a", "b.pt")
    assert join_path("s3://bucket/", "dir/", "ckpt.pt") == "s3://bucket/dir/ckpt.pt"
    assert join_path("memory://root", "x") == "memory://root/x"


def test_get_filesystem_picks_the_backend(tmp_path: Path, s3_storage: Storage) -> None:
    assert isinstance(get_filesystem(tmp_path), LocalFileSystem)
    assert isinstance(get_filesystem("file:///tmp"), LocalFileSystem)
    assert isinstance(get_filesystem("memory://x"), MemoryFileSystem)
    s3 = get_filesystem(s3_storage.root, **s3_storage.options)
    assert type(s3).__name__ == "S3FileSystem"
    assert s3.ls(s3_storage.root) == []  # the bucket the fixture created on the moto server, reached through s3fs


def test_get_filesystem_unknown_protocol_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'nosuchproto'.*Known fsspec protocols: .*memory.*s3"):
        get_filesystem("nosuchproto://bucket/ckpt.pt")


def test_get_filesystem_missing_backend_names_the_install() -> None:
    registered = fsspec.available_protocols()
    assert "oci" in registered
    if module_available("ocifs"):
        pytest.skip("the oci backend is installed here")
    with pytest.raises(MissingDependencyError, match=r"oci://bucket/x.*ocifs"):
        get_filesystem("oci://bucket/x")


def test_exists_isdir_makedirs_remove(storage: Storage) -> None:
    directory = storage.path("a", "b")
    file = storage.path("a", "b", "file.bin")
    assert not exists(file, **storage.options)
    if storage.kind != "s3":  # object stores have no empty directories
        makedirs(directory, **storage.options)
        assert isdir(directory, **storage.options)
    storage.write_bytes(file, b"payload")
    assert exists(file, **storage.options)
    assert isdir(directory, **storage.options)
    assert not isdir(file, **storage.options)

    assert remove_path(storage.path("a"), **storage.options) is True
    assert not exists(file, **storage.options)
    assert not exists(storage.path("a"), **storage.options)
    assert remove_path(storage.path("a"), **storage.options) is False


def test_makedirs_exist_ok(tmp_path: Path) -> None:
    makedirs(tmp_path / "x")
    makedirs(tmp_path / "x")
    with pytest.raises(FileExistsError):
        makedirs(tmp_path / "x", exist_ok=False)


# characters that make up URLs, protocols and chained URLs, so that separators turn up often
_URL_TEXT = st.text(alphabet=st.sampled_from(list("ab3_-:/.s\\ ")), max_size=24)


@given(_URL_TEXT)
def test_path_protocol_reads_a_path_as_fsspec_does(text: str) -> None:
    assert path_protocol(text) == get_protocol(text)


@pytest.mark.parametrize(
    ("path", "protocol"),
    [
        ("s3://bucket/key", "s3"),
        ("simplecache::s3://bucket/key", "simplecache"),
        ("memory://x::y", "memory"),
        ("C:\\data\\model.ckpt", "file"),
        (Path("relative/model.ckpt"), "file"),
        ("file:///tmp/model.ckpt", "file"),
        ("", "file"),
    ],
)
def test_path_protocol_examples(path: str | Path, protocol: str) -> None:
    assert path_protocol(path) == protocol == get_protocol(os.fspath(path))
