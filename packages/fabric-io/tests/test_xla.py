from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fabric_io import TorchCheckpointIO, XLACheckpointIO
from fabric_testing import RunIf
from fabric_utils import MissingDependencyError, override_hardware


def test_requires_torch_xla() -> None:
    with override_hardware(xla_available=False), pytest.raises(MissingDependencyError, match=r"torch_xla.*pip install"):
        XLACheckpointIO()


def test_cpu_checkpoint_round_trip(tmp_path: Path) -> None:
    with override_hardware(xla_available=True):
        checkpoint_io = XLACheckpointIO()
    assert isinstance(checkpoint_io, TorchCheckpointIO)
    state = {"w": torch.arange(4.0), "nested": [torch.ones(2), {"step": 3}]}
    checkpoint_io.save_checkpoint(state, tmp_path / "ckpt.pt")
    loaded = checkpoint_io.load_checkpoint(tmp_path / "ckpt.pt")
    torch.testing.assert_close(loaded, state)


@RunIf(min_cuda_gpus=1)
def test_device_tensors_are_saved_as_cpu_tensors(tmp_path: Path) -> None:
    with override_hardware(xla_available=True):  # the CPU move is the same for any accelerator's tensors
        checkpoint_io = XLACheckpointIO()
    weights = torch.arange(4.0, device="cuda")
    state = {"w": weights, "nested": [torch.ones(2, device="cuda")], "cpu": torch.zeros(1)}
    checkpoint_io.save_checkpoint(state, tmp_path / "ckpt.pt")
    raw = torch.load(tmp_path / "ckpt.pt", weights_only=True)  # no map_location: devices as saved
    assert raw["w"].device.type == "cpu"
    assert raw["nested"][0].device.type == "cpu"
    torch.testing.assert_close(raw["w"], torch.arange(4.0))
    assert state["w"] is weights, "the caller's checkpoint is not modified"
    assert weights.device.type == "cuda"


@RunIf(xla=True)
def test_xla_tensors_are_saved_as_cpu_tensors(tmp_path: Path) -> None:
    import torch_xla.core.xla_model as xm

    device = xm.xla_device()
    checkpoint_io = XLACheckpointIO()
    weights = torch.arange(4.0, device=device) * 2
    checkpoint_io.save_checkpoint({"w": weights, "step": 1}, tmp_path / "ckpt.pt")
    raw = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert raw["w"].device.type == "cpu"
    torch.testing.assert_close(raw["w"], torch.arange(4.0) * 2)
