"""Counting FLOPs with ``measure_flops`` and the peak-FLOPs table behind MFU."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from fabric_core import PEAK_FLOPS, get_available_flops, measure_flops, peak_flops
from fabric_core import flops as flops_module
from fabric_core.flops import device_key, dtype_name, float32_matmul_uses_tf32, precision_dtype
from fabric_precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision
from fabric_testing import RunIf
from fabric_utils import FabricWarning

B, IN, HIDDEN, OUT = 5, 12, 7, 3


def linear_and_input(device: str, input_requires_grad: bool) -> tuple[nn.Module, torch.Tensor]:
    with torch.device(device):
        model = nn.Linear(IN, OUT)
        x = torch.randn(B, IN, requires_grad=input_requires_grad)
    return model, x


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_linear_forward_is_two_flops_per_multiply_add(device: str) -> None:
    model, x = linear_and_input(device, input_requires_grad=False)
    assert measure_flops(model, lambda: model(x)) == 2 * B * IN * OUT


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_linear_with_backward_counts_both_gradient_matmuls(device: str) -> None:
    model, x = linear_and_input(device, input_requires_grad=True)
    # forward, gradient of the input and gradient of the weight: one matmul each
    assert measure_flops(model, lambda: model(x), lambda y: y.sum()) == 3 * 2 * B * IN * OUT


def test_backward_skips_the_input_gradient_nobody_needs() -> None:
    model, x = linear_and_input("cpu", input_requires_grad=False)
    assert measure_flops(model, lambda: model(x), lambda y: y.sum()) == 2 * 2 * B * IN * OUT


def test_two_layer_mlp_on_the_meta_device() -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))
        x = torch.randn(B, IN)
    first, second = 2 * B * IN * HIDDEN, 2 * B * HIDDEN * OUT
    assert measure_flops(model, lambda: model(x)) == first + second
    # backward: the first layer needs only its weight gradient, the second also the gradient of its input
    assert measure_flops(model, lambda: model(x), lambda y: y.square().mean()) == 2 * first + 3 * second


def test_gradients_held_before_the_measurement_are_put_back() -> None:
    model, x = linear_and_input("cpu", input_requires_grad=False)
    model.weight.grad = torch.full_like(model.weight, 7.0)
    measure_flops(model, lambda: model(x), lambda y: y.sum())
    assert torch.equal(model.weight.grad, torch.full_like(model.weight, 7.0))
    assert model.bias.grad is None


def test_measure_flops_rejects_bad_arguments() -> None:
    model, x = linear_and_input("cpu", input_requires_grad=False)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        measure_flops(lambda: model(x), lambda: model(x))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="forward_fn"):
        measure_flops(model, model(x))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="loss_fn"):
        measure_flops(model, lambda: model(x), loss_fn=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must return a tensor"):
        measure_flops(model, lambda: model(x), lambda y: y.sum().item())  # type: ignore[arg-type, return-value]
    assert model.weight.grad is None


@pytest.mark.parametrize(
    ("device_name", "dtype", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.4),
        ("NVIDIA H100 PCIe", torch.float16, 756.5),
        ("NVIDIA H100 NVL", "fp8", 1670.5),
        ("NVIDIA H200", torch.float8_e4m3fn, 1978.9),
        ("NVIDIA GH200 480GB", "tf32", 494.7),
        ("NVIDIA H200 NVL", torch.bfloat16, 835.5),
        ("NVIDIA A100-SXM4-80GB", "tfloat32", 156),
        ("NVIDIA A100 80GB PCIe", torch.float64, 19.5),
        ("NVIDIA A10G", torch.float32, 35),
        ("NVIDIA A10", torch.float32, 31.2),
        ("NVIDIA L4", torch.bfloat16, 121),
        ("NVIDIA L40S", torch.bfloat16, 362.05),
        ("NVIDIA L40", torch.bfloat16, 181.05),
        ("Tesla V100-SXM2-16GB", torch.float16, 125),
        ("Tesla V100-PCIE-32GB", torch.float16, 112),
        ("Tesla V100S-PCIE-32GB", torch.float32, 16.4),
        ("Tesla T4", torch.float16, 65),
        ("NVIDIA GeForce RTX 4090", torch.bfloat16, 165.2),
        ("NVIDIA GeForce RTX 3090", torch.float32, 35.6),
        ("NVIDIA RTX A6000", "int8", 309.7),
        ("NVIDIA RTX 6000 Ada Generation", torch.bfloat16, 364.2),
        ("TPU v4-8", torch.bfloat16, 275),
        ("TPU v5litepod-16", torch.bfloat16, 197),
        ("TPU v5e", torch.int8, 394),
        ("TPU v5p-8", torch.float32, 459),
        ("TPU v6e-4", torch.bfloat16, 918),
    ],
)
def test_peak_flops_of_known_devices(device_name: str, dtype: torch.dtype | str, tflops: float) -> None:
    assert peak_flops(device_name, dtype) == pytest.approx(tflops * 1e12)


@pytest.mark.parametrize(
    ("device_name", "dtype"),
    [
        ("Tesla T4", torch.bfloat16),  # no bfloat16 tensor cores
        ("Tesla V100-SXM2-16GB", "tf32"),  # no TF32 either
        ("NVIDIA GeForce RTX 3090 Ti", torch.bfloat16),  # not the 3090's numbers
        ("Some Future GPU", torch.float32),
        ("AMD EPYC 7763", torch.float32),
    ],
)
def test_peak_flops_is_none_where_the_table_does_not_know(device_name: str, dtype: torch.dtype | str) -> None:
    assert peak_flops(device_name, dtype) is None


def test_table_rows_use_the_documented_dtype_names_and_plausible_values() -> None:
    for key, row in PEAK_FLOPS.items():
        assert row, key
        for name, value in row.items():
            assert dtype_name(name) == name
            assert 1e12 <= value <= 1e16, (key, name, value)
    with pytest.raises(TypeError):
        PEAK_FLOPS["mine"] = {}  # type: ignore[index]


def test_dtype_names_accept_dtypes_and_aliases() -> None:
    assert dtype_name(torch.float32) == "float32"
    assert dtype_name(torch.float8_e5m2) == "float8"
    assert dtype_name("BF16") == "bfloat16"
    assert dtype_name("half") == "float16"
    with pytest.raises(ValueError, match=r"'int4'.*float64, float32, tfloat32, bfloat16, float16, float8, int8"):
        dtype_name("int4")
    with pytest.raises(ValueError, match=r"torch\.complex64"):
        dtype_name(torch.complex64)
    with pytest.raises(TypeError, match="int: 16"):
        dtype_name(16)  # type: ignore[arg-type]


def test_cpu_and_mps_have_no_available_flops_but_bad_dtypes_still_fail() -> None:
    assert get_available_flops(torch.device("cpu"), torch.float32) is None
    assert get_available_flops("mps", torch.bfloat16) is None
    with pytest.raises(ValueError, match="'fp4'"):
        get_available_flops("cpu", "fp4")


@pytest.fixture
def no_tpu_type(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("TPU_ACCELERATOR_TYPE", "ACCELERATOR_TYPE"):
        monkeypatch.delenv(variable, raising=False)


@pytest.mark.usefixtures("no_tpu_type")
def test_tpu_flops_come_from_the_accelerator_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v5p-16")
    assert get_available_flops(torch.device("xla", 0), torch.bfloat16) == pytest.approx(459e12)
    monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v4-8")
    assert get_available_flops("xla", "float32") == pytest.approx(275e12)


@pytest.mark.usefixtures("no_tpu_type")
def test_unknown_tpu_gives_none_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v99-8")
    flops_module._warnings.clear()  # the warning is given once per message
    with pytest.warns(FabricWarning, match=r"'TPU v99-8'.*available_flops="):
        assert get_available_flops("xla", torch.bfloat16) is None


@pytest.fixture
def restore_matmul_precision() -> Iterator[None]:
    before = torch.backends.cuda.matmul.fp32_precision
    yield
    torch.backends.cuda.matmul.fp32_precision = before


@pytest.mark.usefixtures("restore_matmul_precision")
def test_tf32_follows_torch_matmul_setting() -> None:
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    assert not float32_matmul_uses_tf32()
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    assert float32_matmul_uses_tf32()


def test_precision_plugins_name_their_matmul_dtype() -> None:
    assert precision_dtype(Precision()) == torch.float32
    assert precision_dtype(DoublePrecision()) == torch.float64
    assert precision_dtype(HalfPrecision("bf16-true")) == torch.bfloat16
    assert precision_dtype(HalfPrecision("16-true")) == torch.float16
    assert precision_dtype(MixedPrecision("bf16-mixed")) == torch.bfloat16
    assert precision_dtype(object()) is None


@RunIf(min_cuda_gpus=1)
@pytest.mark.usefixtures("restore_matmul_precision")
def test_available_flops_of_the_real_gpu() -> None:
    name = torch.cuda.get_device_name(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a GPU missing from the table warns; the value is then None
        bf16 = get_available_flops("cuda:0", torch.bfloat16)
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        fp32 = get_available_flops(torch.device("cuda", 0), torch.float32)
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        tf32 = get_available_flops("cuda", torch.float32)
    assert bf16 == peak_flops(name, torch.bfloat16)
    assert fp32 == peak_flops(name, torch.float32)
    assert tf32 == peak_flops(name, "tf32")
    if device_key(name) in ("h100 sxm", "h200 sxm"):
        assert bf16 == pytest.approx(989.4e12)
        assert tf32 == pytest.approx(494.7e12)
