from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from fabric_testing import STANDALONE_ENV, RunIf
from fabric_utils import BITSANDBYTES, DEEPSPEED, MPI4PY, S3FS, TENSORBOARDX, override_hardware


def marks_of(decorated: Callable[..., Any]) -> dict[str, list[pytest.Mark]]:
    found: dict[str, list[pytest.Mark]] = {}
    for mark in getattr(decorated, "pytestmark", []):
        found.setdefault(mark.name, []).append(mark)
    return found


def skip_reason(decorated: Callable[..., Any]) -> str | None:
    skips = marks_of(decorated).get("skip", [])
    assert len(skips) <= 1
    return skips[0].kwargs["reason"] if skips else None


def fresh() -> Callable[[], None]:
    """A new test function (pytest does not decorate lambdas: it takes them for marker arguments)."""

    def test_function() -> None:
        return None

    return test_function


def test_no_requirements_adds_nothing() -> None:
    def plain() -> None:
        return None

    assert RunIf()(plain) is plain
    assert marks_of(plain) == {}


def test_cuda_tests_are_marked_and_skipped_without_enough_gpus() -> None:
    with override_hardware(cuda_device_count=1):
        decorated = RunIf(min_cuda_gpus=2)(fresh())
    assert "cuda" in marks_of(decorated)
    assert skip_reason(decorated) == "needs 2 CUDA GPU(s)"


def test_cuda_tests_run_where_the_gpus_exist() -> None:
    with override_hardware(cuda_device_count=2):
        decorated = RunIf(min_cuda_gpus=2)(fresh())
    assert "cuda" in marks_of(decorated)
    assert skip_reason(decorated) is None


def test_bf16_cuda_is_checked_lazily_when_a_gpu_exists() -> None:
    with override_hardware(cuda_device_count=0):
        assert skip_reason(RunIf(bf16_cuda=True)(fresh())) == "needs a CUDA GPU with bf16"
    with override_hardware(cuda_device_count=1):
        decorated = RunIf(bf16_cuda=True)(fresh())
    assert skip_reason(decorated) is None, "asking the GPU is left to the moment the test runs"
    (lazy,) = marks_of(decorated)["fabric_requires"]
    check, reason = lazy.args
    assert reason == "needs a CUDA GPU with bf16"
    assert callable(check)


def test_xla_tests_are_marked_and_skipped_without_xla() -> None:
    with override_hardware(xla_available=False):
        missing = RunIf(xla=True)(fresh())
    with override_hardware(xla_available=True):
        present = RunIf(xla=True)(fresh())
    assert "xla" in marks_of(missing)
    assert skip_reason(missing) == "needs XLA"
    assert "xla" in marks_of(present)
    assert skip_reason(present) is None


def test_mps_requirement_and_exclusion() -> None:
    with override_hardware(mps_available=False):
        assert skip_reason(RunIf(mps=True)(fresh())) == "needs MPS"
        assert skip_reason(RunIf(mps=False)(fresh())) is None
    with override_hardware(mps_available=True):
        needs = RunIf(mps=True)(fresh())
        assert skip_reason(RunIf(mps=False)(fresh())) == "must not run with MPS"
    assert "mps" in marks_of(needs)
    assert skip_reason(needs) is None


@pytest.mark.parametrize(
    ("flag", "dependency", "label"),
    [
        ("deepspeed", DEEPSPEED, "deepspeed"),
        ("bitsandbytes", BITSANDBYTES, "bitsandbytes"),
        ("tensorboardx", TENSORBOARDX, "tensorboardX"),
        ("s3fs", S3FS, "s3fs"),
        ("mpi", MPI4PY, "mpi4py"),
    ],
)
def test_optional_dependencies_follow_their_availability_check(flag: str, dependency: Any, label: str) -> None:
    reason = skip_reason(RunIf(**{flag: True})(fresh()))
    assert reason == (None if dependency.available else f"needs {label}")


def test_min_torch() -> None:
    assert skip_reason(RunIf(min_torch="1.0")(fresh())) is None
    assert skip_reason(RunIf(min_torch="999.0")(fresh())) == "needs torch>=999.0"


def test_standalone_tests_need_the_opt_in_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STANDALONE_ENV, raising=False)
    skipped = RunIf(standalone=True)(fresh())
    assert "standalone" in marks_of(skipped)
    assert skip_reason(skipped) == f"standalone test: set {STANDALONE_ENV}=1"
    monkeypatch.setenv(STANDALONE_ENV, "1")
    assert skip_reason(RunIf(standalone=True)(fresh())) is None


def test_every_missing_requirement_is_listed() -> None:
    with override_hardware(cuda_device_count=0, xla_available=False):
        decorated = RunIf(min_cuda_gpus=1, xla=True, min_torch="999.0")(fresh())
    assert skip_reason(decorated) == "needs 1 CUDA GPU(s); needs torch>=999.0; needs XLA"
    assert {"cuda", "xla"} <= set(marks_of(decorated))


def test_classes_can_be_decorated() -> None:
    with override_hardware(cuda_device_count=0):

        @RunIf(min_cuda_gpus=1)
        class TestGroup:
            def test_one(self) -> None:
                return None

    assert "cuda" in marks_of(TestGroup)
    assert skip_reason(TestGroup) == "needs 1 CUDA GPU(s)"
