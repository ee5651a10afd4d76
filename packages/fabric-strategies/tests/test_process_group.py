"""Process-group creation from a cluster environment: backend choice, validation, a real group with a short timeout."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from fabric_environments import TorchElasticEnvironment
from fabric_strategies import DEFAULT_TIMEOUT, default_process_group_backend
from fabric_strategies.process_group import check_backend, init_process_group
from fabric_testing import run_processes


def test_default_backend_by_device_type():
    assert default_process_group_backend(torch.device("cpu")) == "gloo"
    assert default_process_group_backend(torch.device("cuda", 1)) == "nccl"
    assert default_process_group_backend(torch.device("mps")) == "gloo"
    assert timedelta(minutes=30) == DEFAULT_TIMEOUT


def test_backend_names_are_validated():
    assert check_backend("NCCL") == "nccl"
    assert check_backend("cpu:gloo,cuda:nccl") == "cpu:gloo,cuda:nccl"
    with pytest.raises(ValueError, match=r"'nccll'.*gloo, nccl"):
        check_backend("nccll")


def _create(rank: int, world_size: int) -> tuple[bool, bool, float]:
    environment = TorchElasticEnvironment()
    created = init_process_group(environment, "gloo", timedelta(seconds=20))
    again = init_process_group(environment, "gloo", timedelta(seconds=20))
    value = torch.tensor([float(rank)])
    dist.all_reduce(value)
    return created, again, value.item()


def test_init_process_group_creates_the_group_once():
    assert run_processes(_create, init_process_group=False) == [(True, False, 1.0), (True, False, 1.0)]


def test_timeout_must_be_a_timedelta():
    with pytest.raises(TypeError, match=r"timedelta.*30"):
        init_process_group(TorchElasticEnvironment(), "gloo", 30)  # type: ignore[arg-type]
