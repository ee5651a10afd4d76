"""``RunIf``: skip a test unless the hardware / optional dependencies it needs exist, and mark it for its session."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import torch

from fabric_utils import (
    BITSANDBYTES,
    DEEPSPEED,
    MPI4PY,
    S3FS,
    TENSORBOARDX,
    cuda_device_count,
    mps_available,
    xla_available,
)

_F = TypeVar("_F", bound=Callable[..., Any])

STANDALONE_ENV = "FABRIC_RUN_STANDALONE_TESTS"


def _cuda_bf16_supported() -> bool:
    try:
        return bool(torch.cuda.is_bf16_supported())
    except (RuntimeError, AssertionError):  # no usable driver after all
        return False


def RunIf(  # noqa: N802 - reads like a marker
    *,
    min_cuda_gpus: int = 0,
    min_torch: str | None = None,
    bf16_cuda: bool = False,
    xla: bool = False,
    mps: bool | None = None,
    deepspeed: bool = False,
    bitsandbytes: bool = False,
    tensorboardx: bool = False,
    s3fs: bool = False,
    mpi: bool = False,
    standalone: bool = False,
    skip_windows: bool = False,
) -> Callable[[_F], _F]:
    """Decorate a test (or a class of tests) with the requirements it has.

    Tests needing CUDA get the ``cuda`` marker (run by the ``tests_cuda`` nox session), tests needing XLA the ``xla``
    marker, MPS the ``mps`` marker, standalone tests the ``standalone`` marker; each is skipped, with the reasons
    listed, where a requirement is missing. Hardware is asked through the ``fabric_utils`` probes (so
    ``override_hardware`` applies when a test module is imported inside it), without initialising CUDA.
    """
    reasons: list[str] = []
    marks: list[pytest.MarkDecorator] = []
    if min_cuda_gpus:
        marks.append(pytest.mark.cuda)
        if cuda_device_count() < min_cuda_gpus:
            reasons.append(f"needs {min_cuda_gpus} CUDA GPU(s)")
    if bf16_cuda:
        marks.append(pytest.mark.cuda)
        if cuda_device_count() == 0:
            reasons.append("needs a CUDA GPU with bf16")
        else:  # asking the GPU initialises CUDA: do it when the test is about to run, not at collection
            marks.append(pytest.mark.fabric_requires(_cuda_bf16_supported, "needs a CUDA GPU with bf16"))
    if min_torch is not None:
        from packaging.version import Version

        if Version(torch.__version__.split("+")[0]) < Version(min_torch):
            reasons.append(f"needs torch>={min_torch}")
    if xla:
        marks.append(pytest.mark.xla)
        if not xla_available():
            reasons.append("needs XLA")
    if mps is True:
        marks.append(pytest.mark.mps)
        if not mps_available():
            reasons.append("needs MPS")
    elif mps is False and mps_available():
        reasons.append("must not run with MPS")
    for flag, dep, label in (
        (deepspeed, DEEPSPEED, "deepspeed"),
        (bitsandbytes, BITSANDBYTES, "bitsandbytes"),
        (tensorboardx, TENSORBOARDX, "tensorboardX"),
        (s3fs, S3FS, "s3fs"),
        (mpi, MPI4PY, "mpi4py"),
    ):
        if flag and not dep.available:
            reasons.append(f"needs {label}")
    if standalone:
        marks.append(pytest.mark.standalone)
        if os.environ.get(STANDALONE_ENV, "0") != "1":
            reasons.append(f"standalone test: set {STANDALONE_ENV}=1")
    if skip_windows and sys.platform == "win32":
        reasons.append("not supported on Windows")

    def decorate(fn: _F) -> _F:
        for mark in marks:
            fn = mark(fn)
        if reasons:
            fn = pytest.mark.skip(reason="; ".join(reasons))(fn)
        return fn

    return decorate
