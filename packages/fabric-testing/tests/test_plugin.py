"""The pytest plugin, exercised through real inner pytest sessions (pytester)."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest

from fabric_utils import override_hardware

LEAKY_TESTS = """
import os
import subprocess
import sys
import threading

import torch.distributed as dist


def test_clean(monkeypatch):
    monkeypatch.setenv("FABRIC_INNER_SET_PROPERLY", "1")


def test_leaks_env():
    os.environ["FABRIC_INNER_LEAKED"] = "1"


def test_leaks_thread():
    stop = threading.Event()
    threading.Thread(target=stop.wait, name="inner-leaky-thread", daemon=True).start()


def test_leaks_child():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open("child.pid", "w") as f:
        f.write(str(proc.pid))


def test_leaks_process_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


def test_runs_after_the_leaks_with_everything_restored():
    assert "FABRIC_INNER_LEAKED" not in os.environ
    assert not dist.is_initialized()
"""


SHORT_GRACES = """
from fabric_testing import hygiene

hygiene.THREAD_GRACE = hygiene.CHILD_GRACE = 0.2
"""


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="child processes are found through /proc")
def test_hygiene_fails_tests_that_leak(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leaky=LEAKY_TESTS)
    # the leaked thread waits forever and the leaked child sleeps 120 s: the check's graces (2 s and 5 s, waited out
    # in full for each leak) only delay the verdict here; test_hygiene.py covers what the graces let end in time
    pytester.makeconftest(SHORT_GRACES)
    # a separate interpreter: the leaked thread must not outlive the inner session inside this one
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=6, errors=4)
    result.stdout.fnmatch_lines_random(
        [
            "*test_leaky.py::test_clean PASSED*",
            "*test_leaky.py::test_leaks_env ERROR*",
            "*test_leaky.py::test_leaks_thread ERROR*",
            "*test_leaky.py::test_leaks_child ERROR*",
            "*test_leaky.py::test_leaks_process_group ERROR*",
            "*test_leaky.py::test_runs_after_the_leaks_with_everything_restored PASSED*",
        ]
    )
    output = result.stdout.str()
    assert (
        "test hygiene: environment variables leaked (use pytest's monkeypatch): added=['FABRIC_INNER_LEAKED']"
        " removed=[] changed=[]" in output
    )
    assert "test hygiene: threads leaked: ['inner-leaky-thread']" in output
    child = int(Path(pytester.path, "child.pid").read_text())
    assert f"test hygiene: child processes leaked (killed now): [{child}]" in output
    assert "test hygiene: a torch.distributed process group was left initialised (destroyed now)" in output
    assert len(re.findall(r"^test hygiene:", output, re.MULTILINE)) == 4, (
        "the clean tests, and the test after the leaks, are not blamed"
    )
    assert not running(child), "the leaked child must have been killed"


def test_no_hygiene_option_and_exempt_marker_switch_the_check_off(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_exempt="""
        import os
        import pytest

        @pytest.mark.hygiene_exempt
        def test_exempt():
            os.environ["FABRIC_INNER_EXEMPT"] = "1"

        def test_not_exempt():
            os.environ["FABRIC_INNER_NOT_EXEMPT"] = "1"
        """
    )
    try:
        pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2, errors=1)
        pytester.runpytest("-p", "no:cacheprovider", "--no-hygiene").assert_outcomes(passed=2)
    finally:  # the in-process sessions shared this process's environment
        os.environ.pop("FABRIC_INNER_EXEMPT", None)
        os.environ.pop("FABRIC_INNER_NOT_EXEMPT", None)


SELECTION_TESTS = """
import pytest
from fabric_testing import RunIf


def test_plain():
    pass


@RunIf(min_cuda_gpus=1)
def test_needs_cuda():
    pass


@RunIf(xla=True)
def test_needs_xla():
    pass


@pytest.mark.mps
def test_marked_mps():
    pass
"""


def test_hardware_cpu_selects_the_tests_that_need_no_hardware(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_selection=SELECTION_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "--hardware", "cpu", "-v")
    result.assert_outcomes(passed=1, deselected=3)
    result.stdout.fnmatch_lines(["*test_plain PASSED*"])


def test_hardware_cuda_selects_the_cuda_tests_which_skip_without_a_gpu(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_selection=SELECTION_TESTS)
    with override_hardware(cuda_device_count=0):
        result = pytester.runpytest("-p", "no:cacheprovider", "--hardware", "cuda", "-rs")
    result.assert_outcomes(skipped=1, deselected=3)
    result.stdout.fnmatch_lines(["*needs 1 CUDA GPU(s)*"])


def test_hardware_cuda_runs_the_cuda_tests_where_a_gpu_exists(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_selection=SELECTION_TESTS)
    with override_hardware(cuda_device_count=1):
        result = pytester.runpytest("-p", "no:cacheprovider", "--hardware", "cuda", "-v")
    result.assert_outcomes(passed=1, deselected=3)
    result.stdout.fnmatch_lines(["*test_needs_cuda PASSED*"])


def test_hardware_xla_and_mps_select_their_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_selection=SELECTION_TESTS)
    with override_hardware(xla_available=True):
        pytester.runpytest("-p", "no:cacheprovider", "--hardware", "xla").assert_outcomes(passed=1, deselected=3)
    pytester.runpytest("-p", "no:cacheprovider", "--hardware", "mps").assert_outcomes(passed=1, deselected=3)


def test_without_hardware_option_everything_is_collected(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_selection=SELECTION_TESTS)
    with override_hardware(cuda_device_count=0, xla_available=False):
        result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, skipped=2)


def test_unknown_hardware_is_rejected_with_the_choices(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_selection=SELECTION_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "--hardware", "tpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--hardware: invalid choice: 'tpu' (choose from *cpu*cuda*xla*mps*)*"])


def test_lazy_requirements_are_checked_when_the_test_runs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_lazy=textwrap.dedent(
            """
            import pytest

            CALLS = []

            def never():
                CALLS.append("asked")
                return False

            @pytest.mark.fabric_requires(never, "needs the impossible")
            def test_skipped():
                pass

            @pytest.mark.fabric_requires(lambda: True, "always there")
            def test_runs():
                pass

            def test_check_was_not_asked_at_collection():
                assert CALLS == ["asked"]
            """
        )
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs", "-p", "no:randomly")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["*needs the impossible*"])


def test_markers_are_registered_for_strict_markers(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("-p", "no:cacheprovider", "--markers")
    result.stdout.fnmatch_lines_random(
        ["@pytest.mark.cuda:*", "@pytest.mark.xla:*", "@pytest.mark.mps:*", "@pytest.mark.standalone:*"]
    )
