"""TransformerEnginePrecision: clear errors without CUDA or without the library; the real thing on CUDA."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from fabric_precision import TransformerEnginePrecision, precision_plugin
from fabric_testing import RunIf
from fabric_utils import TRANSFORMER_ENGINE, MissingDependencyError, override_hardware


@pytest.mark.parametrize("name", ["transformer-engine", "transformer-engine-float16"])
def test_without_cuda_the_error_says_so(name: str) -> None:
    with override_hardware(cuda_device_count=0), pytest.raises(ValueError, match="needs a CUDA GPU") as err:
        precision_plugin(name)
    assert "bf16-mixed" in str(err.value)  # names what would run instead


def test_without_the_library_the_error_has_the_install_command(hide_module: Callable[[str], None]) -> None:
    hide_module("transformer_engine")
    with (
        override_hardware(cuda_device_count=1),
        pytest.raises(MissingDependencyError, match=r"pip install 'transformer-engine\[pytorch\]'"),
    ):
        TransformerEnginePrecision(weights_dtype=torch.float16)


def test_bad_dtypes_are_rejected() -> None:
    with pytest.raises(TypeError, match=r"weights_dtype must be a floating-point torch\.dtype, got torch\.int8"):
        TransformerEnginePrecision(weights_dtype=torch.int8)
    with pytest.raises(TypeError, match="fallback_compute_dtype must be a floating-point"):
        TransformerEnginePrecision(fallback_compute_dtype="bf16")  # type: ignore[arg-type]


@RunIf(min_cuda_gpus=1)
@pytest.mark.skipif(not TRANSFORMER_ENGINE.available, reason="needs transformer_engine")
def test_real_transformer_engine_swaps_layers_and_runs() -> None:
    import transformer_engine.pytorch as te

    plugin = precision_plugin("transformer-engine")
    assert isinstance(plugin, TransformerEnginePrecision)
    assert plugin.precision == "transformer-engine"
    model = nn.Sequential(nn.Linear(32, 64), nn.LayerNorm(64), nn.Linear(64, 16), nn.Linear(16, 3))
    with pytest.warns(UserWarning, match=r"kept \['3'\] as torch.nn.Linear"):
        model = plugin.convert_module(model).cuda()
    assert isinstance(model[0], te.Linear)
    assert isinstance(model[1], te.LayerNorm)
    assert isinstance(model[2], te.Linear)
    assert isinstance(model[3], nn.Linear)  # 3 output features do not suit FP8 GEMMs
    with plugin.forward_context():
        out = model(plugin.convert_input(torch.randn(16, 32, device="cuda")))
    out = plugin.convert_output(out)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert model[0].weight.grad is not None
