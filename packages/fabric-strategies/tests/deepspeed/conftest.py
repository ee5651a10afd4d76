"""Import deepspeed once, before the first DeepSpeed test of the session, where it is installed.

``import deepspeed`` sets ``PYTORCH_NVML_BASED_CUDA_CHECK`` in the environment for the life of the process; doing it
here keeps that out of every test's hygiene check (which would otherwise blame the first test that imports it).
"""

from __future__ import annotations

import importlib

import pytest

from fabric_utils import DEEPSPEED


@pytest.fixture(scope="session", autouse=True)
def _deepspeed_imported() -> None:
    if DEEPSPEED.available:
        importlib.import_module("deepspeed")
