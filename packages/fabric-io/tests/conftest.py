"""Real storage for the IO tests: a moto S3 server on 127.0.0.1 reached through s3fs, and fsspec's memory store."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pytest

from fabric_io import get_filesystem, join_path
from fabric_utils import module_available


@dataclass
class Storage:
    """A place to write to in one test: ``root`` (a directory or URL prefix) and the fsspec options it needs."""

    kind: str
    root: str
    options: dict[str, Any] = field(default_factory=dict)

    def path(self, *parts: str) -> str:
        return join_path(self.root, *parts)

    def write_bytes(self, path: str, data: bytes) -> None:
        get_filesystem(path, **self.options).pipe_file(path, data)

    def read_bytes(self, path: str) -> bytes:
        return bytes(get_filesystem(path, **self.options).cat_file(path))


@pytest.fixture(scope="session", autouse=True)
def _torch_dynamo_imported() -> None:
    """Import ``torch._dynamo`` once, before any test's hygiene snapshot.

    Its import (which building any ``torch.optim`` optimizer triggers) writes ``TORCHINDUCTOR_CACHE_DIR`` into
    ``os.environ``: torch's one-time side effect, which the hygiene fixture would otherwise pin on the first test.
    """
    import torch._dynamo  # noqa: F401


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str | None]:
    """One moto S3 server for the session, stopped and joined at its end; None when moto is not installed.

    Tests get it through a fixture argument, never ``request.getfixturevalue``: pytest then starts it before the
    hygiene fixture's snapshot of the running threads, so the server's thread is not reported as a leak.
    """
    if not module_available("moto.server"):
        yield None
        return
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_storage(s3_endpoint: str | None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Storage]:
    """A fresh bucket on the moto server; credentials come from the environment, as they would for a user."""
    if s3_endpoint is None:
        pytest.skip("needs moto[server]")
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("s3fs")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "fabric-test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fabric-test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    bucket = f"fabric-io-{uuid.uuid4().hex[:16]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    try:
        client.create_bucket(Bucket=bucket)
    finally:
        client.close()
    options = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    try:
        yield Storage("s3", f"s3://{bucket}", options)
    finally:
        _close_s3_connections(options)


def _close_s3_connections(options: dict[str, Any]) -> None:
    """Close the cached s3fs client's keep-alive connections, so the server's connection threads end now."""
    import s3fs

    filesystem = fsspec.filesystem("s3", **options)
    s3fs.S3FileSystem.close_session(filesystem.loop, filesystem.s3)
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def memory_storage() -> Iterator[Storage]:
    root = f"memory://fabric-io-tests/{uuid.uuid4().hex}"
    try:
        yield Storage("memory", root)
    finally:
        filesystem = fsspec.filesystem("memory")
        if filesystem.exists(root):
            filesystem.rm(root, recursive=True)


@pytest.fixture
def local_storage(tmp_path: Path) -> Storage:
    return Storage("local", str(tmp_path))


@pytest.fixture(params=["local", "memory", "s3"])
def storage(request: pytest.FixtureRequest, s3_endpoint: str | None) -> Storage:
    """Each test that asks for ``storage`` runs once per backend: a local directory, ``memory://`` and ``s3://``.

    ``s3_endpoint`` is an argument (not looked up on demand) so the session's server starts before the first
    test's hygiene snapshot.
    """
    return request.getfixturevalue(f"{request.param}_storage")


@pytest.fixture
def fsynced_inodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The inode of every ``os.fsync`` call made during the test, in order (the real fsync still runs)."""
    seen: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        seen.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return seen
