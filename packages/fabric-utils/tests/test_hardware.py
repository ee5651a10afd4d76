from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fabric_testing import RunIf
from fabric_utils import (
    cpu_count,
    cuda_available,
    cuda_device_count,
    module_available,
    mps_available,
    override_hardware,
    suggested_max_num_workers,
    xla_available,
    xla_device_count,
)


def test_real_probes_agree_with_torch_and_do_not_initialise_cuda() -> None:
    assert cuda_device_count() == (torch.cuda.device_count() if torch.backends.cuda.is_built() else 0)
    assert cuda_available() == (cuda_device_count() > 0)
    assert xla_available() == module_available("torch_xla")
    if not xla_available():
        assert xla_device_count() == 0
    if sys.platform != "darwin":
        assert mps_available() is False
    assert not torch.cuda.is_initialized()


def test_cpu_count_is_the_usable_core_count() -> None:
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert cpu_count() == expected
    assert cpu_count() >= 1


def test_override_hardware_fakes_devices_inside_the_block_only() -> None:
    real = (cuda_device_count(), mps_available(), xla_available(), xla_device_count())
    with override_hardware(cuda_device_count=4, mps_available=True, xla_available=True, xla_device_count=8):
        assert cuda_device_count() == 4
        assert cuda_available()
        assert mps_available() is True
        assert xla_available() is True
        assert xla_device_count() == 8
    assert (cuda_device_count(), mps_available(), xla_available(), xla_device_count()) == real


def test_override_hardware_can_take_hardware_away() -> None:
    with override_hardware(cuda_device_count=0, mps_available=False, xla_available=False):
        assert not cuda_available()
        assert mps_available() is False
        assert xla_available() is False
        assert xla_device_count() == 0


def test_nested_overrides_keep_what_the_inner_one_does_not_set() -> None:
    real_mps = mps_available()
    with override_hardware(cuda_device_count=2):
        with override_hardware(mps_available=True):
            assert cuda_device_count() == 2
            assert mps_available() is True
        with override_hardware(cuda_device_count=5):
            assert cuda_device_count() == 5
        assert cuda_device_count() == 2
        assert mps_available() is real_mps


def test_xla_device_count_alone_implies_availability() -> None:
    with override_hardware(xla_device_count=4):
        assert xla_available() is True
        assert xla_device_count() == 4
    with override_hardware(xla_device_count=0):
        assert xla_available() is False


def test_override_is_restored_when_the_block_raises() -> None:
    before = cuda_device_count()
    with pytest.raises(RuntimeError, match="inside"), override_hardware(cuda_device_count=3):
        raise RuntimeError("inside")
    assert cuda_device_count() == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cuda_device_count": -1}, r"cuda_device_count=\.\.\.\) needs a non-negative int or None, got -1"),
        ({"cuda_device_count": True}, "got True"),
        ({"xla_device_count": 1.5}, "got 1.5"),
        ({"mps_available": 1}, r"mps_available=\.\.\.\) needs True, False or None, got 1"),
        ({"xla_available": "yes"}, "got 'yes'"),
    ],
)
def test_override_rejects_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message), override_hardware(**kwargs):  # type: ignore[arg-type]
        pass


@RunIf(min_cuda_gpus=1)
def test_counting_cuda_devices_does_not_initialise_cuda_so_fork_stays_safe() -> None:
    script = textwrap.dedent(
        """
        import multiprocessing as mp
        import torch
        from fabric_utils import cuda_device_count

        def child(queue):
            queue.put(torch.ones(1, device="cuda").item())

        if __name__ == "__main__":
            assert cuda_device_count() >= 1
            assert not torch.cuda.is_initialized()
            ctx = mp.get_context("fork")
            queue = ctx.Queue()
            proc = ctx.Process(target=child, args=(queue,))
            proc.start()
            print(queue.get(timeout=120))
            proc.join()
            assert proc.exitcode == 0
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1.0"


def test_suggested_max_num_workers_shares_the_cores_among_local_processes() -> None:
    cores = cpu_count()
    assert suggested_max_num_workers(1) == max(1, cores - 1)
    assert suggested_max_num_workers(cores * 4) == 1  # never below one worker
    with pytest.raises(ValueError, match=r"local_world_size must be >= 1.*got 0"):
        suggested_max_num_workers(0)
    with pytest.raises(TypeError, match=r"got '2'"):
        suggested_max_num_workers("2")  # type: ignore[arg-type]
