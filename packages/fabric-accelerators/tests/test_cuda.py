"""CUDAAccelerator and find_usable_cuda_devices.

Device logic runs here through ``override_hardware``; the real device paths are marked ``RunIf(min_cuda_gpus=...)``
and run in the ``tests_cuda`` session.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest
import torch

from fabric_accelerators import CUDAAccelerator, find_usable_cuda_devices
from fabric_accelerators.cuda import matmul_precision_hint, tf32_matmul_enabled
from fabric_testing import RunIf
from fabric_utils import cuda_device_count, override_hardware


@pytest.mark.parametrize(
    ("devices", "expected"),
    [
        ("auto", [0, 1]),
        (-1, [0, 1]),
        ("-1", [0, 1]),
        (1, [0]),
        (2, [0, 1]),
        ("2", [0, 1]),
        ([1], [1]),
        ([1, 0], [1, 0]),
        ((0, 1), [0, 1]),
        ("0,1", [0, 1]),
        ("1,", [1]),
    ],
)
def test_parse_devices(devices, expected):
    with override_hardware(cuda_device_count=2):
        assert CUDAAccelerator.parse_devices(devices) == expected
        assert CUDAAccelerator.get_parallel_devices(devices) == [torch.device("cuda", i) for i in expected]


@pytest.mark.parametrize(
    ("devices", "error", "match"),
    [
        (0, ValueError, "asks for no CUDA devices"),
        ("0", ValueError, "asks for no CUDA devices"),
        (-2, ValueError, "only negative value allowed is -1"),
        (3, ValueError, "asks for 3 CUDA devices, but this machine has 2 CUDA devices \\(indices 0, 1\\)"),
        ([0, 2], ValueError, "indices \\[2\\] that do not exist: this machine has 2 CUDA devices"),
        ([0, 0], ValueError, "repeats the device indices \\[0\\]"),
        ("1,1", ValueError, "repeats the device indices \\[1\\]"),
        ("gpu", ValueError, "Could not parse"),
        (1.0, TypeError, "float"),
        (None, TypeError, "NoneType"),
        ([0, "1"], TypeError, "Device indices must be ints"),
    ],
)
def test_parse_devices_errors(devices, error, match):
    with override_hardware(cuda_device_count=2), pytest.raises(error, match=match) as info:
        CUDAAccelerator.parse_devices(devices)
    assert repr(devices) in str(info.value)


def test_no_cuda_devices():
    with override_hardware(cuda_device_count=0):
        assert not CUDAAccelerator.is_available()
        assert CUDAAccelerator.auto_device_count() == 0
        for devices in ("auto", -1, 1, [0]):
            with pytest.raises(ValueError, match="this machine has no CUDA devices"):
                CUDAAccelerator.parse_devices(devices)


def test_count_follows_the_probe():
    with override_hardware(cuda_device_count=8):
        assert CUDAAccelerator.is_available()
        assert CUDAAccelerator.auto_device_count() == 8
        assert CUDAAccelerator.parse_devices("auto") == list(range(8))


def test_parsing_does_not_initialise_cuda():
    with override_hardware(cuda_device_count=2):
        CUDAAccelerator.get_parallel_devices("auto")
    CUDAAccelerator.auto_device_count()  # the real probe, too
    CUDAAccelerator.is_available()
    assert not torch.cuda.is_initialized()


def test_setup_device_and_stats_check_the_type():
    accelerator = CUDAAccelerator()
    with pytest.raises(ValueError, match="CUDAAccelerator sets up 'cuda' devices, got cpu"):
        accelerator.setup_device(torch.device("cpu"))
    with pytest.raises(TypeError, match=r"expects a torch\.device, got 'cuda:0'"):
        accelerator.setup_device("cuda:0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got cpu"):
        accelerator.get_device_stats(torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_initialized(), reason="CUDA already initialised in this process")
def test_teardown_does_not_initialise_cuda():
    CUDAAccelerator().teardown()
    assert not torch.cuda.is_initialized()


@pytest.mark.parametrize(
    ("capability", "tf32", "hinted"),
    [
        ((8, 0), False, True),
        ((9, 0), False, True),
        ((12, 1), False, True),
        ((7, 5), False, False),
        ((6, 1), False, False),
        ((8, 6), True, False),
    ],
)
def test_matmul_precision_hint(capability, tf32, hinted):
    message = matmul_precision_hint("NVIDIA A100-SXM4-40GB", capability, tf32)
    if hinted:
        assert "'NVIDIA A100-SXM4-40GB'" in message
        assert "torch.set_float32_matmul_precision('high')" in message
    else:
        assert message is None


@pytest.fixture
def restore_matmul_precision():
    legacy = torch.get_float32_matmul_precision()
    new = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    yield
    torch.set_float32_matmul_precision(legacy)
    if new is not None:
        torch.backends.cuda.matmul.fp32_precision = new


@pytest.mark.usefixtures("restore_matmul_precision")
def test_tf32_matmul_enabled_reads_the_legacy_api():
    torch.set_float32_matmul_precision("highest")
    assert not tf32_matmul_enabled()
    torch.set_float32_matmul_precision("high")
    assert tf32_matmul_enabled()
    torch.set_float32_matmul_precision("medium")
    assert tf32_matmul_enabled()


@pytest.mark.usefixtures("restore_matmul_precision")
@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="torch without the new API")
def test_tf32_matmul_enabled_reads_the_new_api():
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    assert not tf32_matmul_enabled()
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    assert tf32_matmul_enabled()


@pytest.mark.parametrize(
    ("num_devices", "error"), [(0, ValueError), (-2, ValueError), ("1", TypeError), (True, TypeError)]
)
def test_find_usable_bad_requests(num_devices, error):
    with override_hardware(cuda_device_count=2), pytest.raises(error) as info:
        find_usable_cuda_devices(num_devices)
    assert repr(num_devices) in str(info.value)


def test_find_usable_more_than_visible():
    with override_hardware(cuda_device_count=2), pytest.raises(ValueError, match="this machine has 2 visible CUDA"):
        find_usable_cuda_devices(3)
    with override_hardware(cuda_device_count=0), pytest.raises(ValueError, match="has no visible CUDA devices"):
        find_usable_cuda_devices()


@pytest.mark.skipif(cuda_device_count() > 0, reason="needs a machine where no device accepts work")
@pytest.mark.parametrize("num_devices", [-1, 2])
def test_find_usable_reports_devices_that_refuse_work(num_devices):
    # The probe really runs in a subprocess; on this machine no device can take a tensor, and the error says why.
    with override_hardware(cuda_device_count=2), pytest.raises(RuntimeError) as info:
        find_usable_cuda_devices(num_devices)
    message = str(info.value)
    assert f"find_usable_cuda_devices({num_devices}) found 0 usable CUDA device(s) [] out of 2 visible" in message
    assert "device 0: " in message
    assert "device 1: " in message


@RunIf(min_cuda_gpus=1)
def test_real_device_setup_stats_and_teardown():
    accelerator = CUDAAccelerator()
    device = CUDAAccelerator.get_parallel_devices(1)[0]
    accelerator.setup_device(device)
    assert torch.cuda.current_device() == 0
    tensor = torch.ones(256, 1024, device=device)
    stats = accelerator.get_device_stats(device)
    assert stats["allocated_bytes.all.current"] >= tensor.numel() * tensor.element_size()
    del tensor
    cached = torch.cuda.memory_reserved(device)
    assert cached > 0  # the caching allocator keeps the freed block
    accelerator.teardown()
    assert torch.cuda.memory_reserved(device) < cached


@RunIf(min_cuda_gpus=1)
@pytest.mark.usefixtures("restore_matmul_precision")
def test_real_matmul_hint_on_ampere_or_later(caplog):
    from fabric_accelerators import cuda as cuda_module

    device = torch.device("cuda", 0)
    if torch.cuda.get_device_capability(device) < (8, 0):
        pytest.skip("the GPU predates Ampere: no hint expected")
    torch.set_float32_matmul_precision("highest")
    cuda_module._hints.clear()
    with caplog.at_level(logging.INFO, logger="fabric"):
        CUDAAccelerator().setup_device(device)
        CUDAAccelerator().setup_device(device)
    hints = [r for r in caplog.records if "set_float32_matmul_precision" in r.getMessage()]
    assert len(hints) == 1  # once per process
    assert torch.cuda.get_device_name(device) in hints[0].getMessage()


_FORK_SAFETY_SCRIPT = textwrap.dedent(
    """
    import multiprocessing as mp
    import torch
    from fabric_accelerators import CUDAAccelerator, find_usable_cuda_devices

    assert CUDAAccelerator.is_available()
    devices = CUDAAccelerator.get_parallel_devices("auto")
    usable = find_usable_cuda_devices(1)
    assert usable == [0], usable
    assert not torch.cuda.is_initialized(), "counting or probing initialised CUDA in the parent"

    def child():
        assert torch.ones(2, device="cuda:0").sum().item() == 2.0

    process = mp.get_context("fork").Process(target=child)
    process.start()
    process.join(120)
    assert process.exitcode == 0, process.exitcode
    print("OK", len(devices))
    """
)


@RunIf(min_cuda_gpus=1)
def test_real_counting_and_probing_keep_fork_safe():
    result = subprocess.run(
        [sys.executable, "-c", _FORK_SAFETY_SCRIPT], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["OK", str(cuda_device_count())]
