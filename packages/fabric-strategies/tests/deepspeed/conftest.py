"""Import deepspeed once, before the first DeepSpeed test of the session, where it is installed.

``import deepspeed`` sets ``PYTORCH_NVML_BASED_CUDA_CHECK`` in the environment for the life of the process; doing it
here keeps that out of every test's hygiene check (which would otherwise blame the first test that imports it).
The processes of the distributed tests import it too: the fork server of ``run_processes`` imports it once for all
of them (about 1.7 s of CPU per process otherwise).
"""

from __future__ import annotations

import importlib

import pytest

from fabric_testing import preload_in_fork_server
from fabric_utils import DEEPSPEED

preload_in_fork_server("deepspeed")  # left out where it is not installed


@pytest.fixture(scope="session", autouse=True)
def _deepspeed_imported() -> None:
    if DEEPSPEED.available:
        importlib.import_module("deepspeed")
