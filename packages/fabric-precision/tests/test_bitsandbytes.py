"""BitsandbytesPrecision: argument checks everywhere; real quantization where bitsandbytes is installed."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from fabric_precision import BitsandbytesPrecision
from fabric_testing import RunIf
from fabric_utils import MissingDependencyError

MODES = ["nf4", "nf4-dq", "fp4", "fp4-dq", "int8", "int8-training"]


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(64, 64)
        self.norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, 32, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.proj(x)))


def test_unknown_mode_lists_the_modes() -> None:
    with pytest.raises(ValueError, match=r"Unknown bitsandbytes quantization mode 'nf8'\. Choose one of: nf4, nf4-dq"):
        BitsandbytesPrecision("nf8")  # type: ignore[arg-type]


def test_int8_needs_float16_and_dtype_must_be_floating() -> None:
    with pytest.raises(ValueError, match=r"mode='int8' works with dtype=torch.float16 only, got dtype=torch.bfloat16"):
        BitsandbytesPrecision("int8", dtype=torch.bfloat16)
    with pytest.raises(TypeError, match=r"dtype must be a floating-point torch\.dtype"):
        BitsandbytesPrecision("nf4", dtype=torch.int32)
    with pytest.raises(TypeError, match="ignore_modules takes a collection"):
        BitsandbytesPrecision("nf4", ignore_modules="head")


def test_missing_bitsandbytes_names_the_install_command(hide_module: Callable[[str], None]) -> None:
    hide_module("bitsandbytes")
    with pytest.raises(MissingDependencyError, match=r"BitsandbytesPrecision.*pip install bitsandbytes"):
        BitsandbytesPrecision("nf4-dq")


@RunIf(bitsandbytes=True)
@pytest.mark.parametrize("mode", MODES)
def test_quantizes_linear_layers_on_cpu(mode: str) -> None:
    import bitsandbytes as bnb

    torch.manual_seed(0)
    plugin = BitsandbytesPrecision(mode, dtype=torch.float16 if mode.startswith("int8") else torch.bfloat16)  # type: ignore[arg-type]
    assert plugin.precision == f"bitsandbytes-{mode}"
    assert (plugin.needs_forward_context, plugin.needs_input_conversion, plugin.needs_output_conversion) == (
        True,
        True,
        True,
    )
    original = Block()
    reference = Block()
    reference.load_state_dict(original.state_dict())
    model = plugin.convert_module(original)
    expected = bnb.nn.Linear8bitLt if mode.startswith("int8") else bnb.nn.Linear4bit
    assert isinstance(model.proj, expected)
    assert isinstance(model.head, expected)
    assert model.head.bias is None
    assert model.norm.weight.dtype == plugin.dtype
    model = model.to("cpu")  # moving to the device quantizes (as Fabric's setup does)
    quantized_dtype = torch.float16 if mode == "int8-training" else (torch.int8 if mode == "int8" else torch.uint8)
    assert model.proj.weight.dtype == quantized_dtype
    x = torch.randn(4, 64)
    with plugin.forward_context():
        out = model(plugin.convert_input(x))
    out = plugin.convert_output(out)
    assert out.dtype == torch.float32
    expected_out = reference(x)
    # quantization error only: the layers compute the same function
    relative = (out - expected_out).norm() / expected_out.norm()
    assert relative < 0.25, relative


@RunIf(bitsandbytes=True)
def test_ignore_modules_keeps_those_layers() -> None:
    import bitsandbytes as bnb

    plugin = BitsandbytesPrecision("nf4", ignore_modules={"head"})
    model = plugin.convert_module(Block())
    assert isinstance(model.proj, bnb.nn.Linear4bit)
    assert type(model.head) is nn.Linear
    with pytest.raises(ValueError, match=r"ignore_modules names \['haed'\] that are not submodules of Block"):
        BitsandbytesPrecision("nf4", ignore_modules=["haed"]).convert_module(Block())


@RunIf(bitsandbytes=True)
def test_module_without_linear_layers_is_an_error_and_converted_modules_are_kept() -> None:
    import bitsandbytes as bnb

    plugin = BitsandbytesPrecision("fp4")
    with pytest.raises(ValueError, match=r"quantizes torch\.nn\.Linear layers, but the Sequential module has none"):
        plugin.convert_module(nn.Sequential(nn.ReLU()))
    model = plugin.convert_module(Block())
    layer = model.proj
    again = BitsandbytesPrecision("fp4", dtype=torch.bfloat16).convert_module(model)
    assert again.proj is layer
    assert layer.compute_dtype == torch.bfloat16
    assert isinstance(BitsandbytesPrecision("nf4").convert_module(nn.Linear(64, 64)), bnb.nn.Linear4bit)


@RunIf(bitsandbytes=True)
def test_init_contexts_use_the_dtype() -> None:
    plugin = BitsandbytesPrecision("int8")
    with plugin.module_init_context():
        assert nn.Linear(2, 2).weight.dtype == torch.float16
    with plugin.tensor_init_context():
        assert torch.ones(1).dtype == torch.float16
    assert torch.ones(1).dtype == torch.float32


@RunIf(min_cuda_gpus=1, bitsandbytes=True)
@pytest.mark.parametrize("mode", ["nf4-dq", "int8"])
def test_module_on_cuda_is_quantized_at_once(mode: str) -> None:
    plugin = BitsandbytesPrecision(mode)  # type: ignore[arg-type]
    model = plugin.convert_module(Block().cuda())
    assert model.proj.weight.device.type == "cuda"
    assert model.proj.weight.dtype in (torch.uint8, torch.int8)
    with plugin.forward_context():
        out = model(plugin.convert_input(torch.randn(4, 64, device="cuda")))
    assert plugin.convert_output(out).dtype == torch.float32
