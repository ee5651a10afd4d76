"""Materialising meta-device modules (sharded modules are covered in test_fsdp_distributed.py)."""

from __future__ import annotations

import torch
from torch import nn

from fabric_strategies.fsdp.materialize import has_meta_tensors, materialize_module


class NoReset(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))


def test_meta_module_gets_the_values_of_a_normal_init_with_the_same_seed():
    with torch.device("meta"):
        torch.manual_seed(0)
        meta = _model()
    assert has_meta_tensors(meta)
    torch.manual_seed(0)
    assert materialize_module(meta, torch.device("cpu")) == []
    torch.manual_seed(0)
    expected = _model()
    assert not has_meta_tensors(meta)
    for (name, value), reference in zip(meta.state_dict().items(), expected.state_dict().values()):
        assert torch.equal(value, reference), name


def test_modules_without_reset_parameters_are_reported():
    with torch.device("meta"):
        meta = nn.Sequential(nn.Linear(2, 3), NoReset())
    assert materialize_module(meta, torch.device("cpu")) == ["1"]
    assert not has_meta_tensors(meta)
