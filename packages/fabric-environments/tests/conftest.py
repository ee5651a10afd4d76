"""Every test starts from an environment without launcher variables, whatever the machine running the tests sets."""

from __future__ import annotations

import os

import pytest

_LAUNCHER_VARIABLES = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "GLOBAL_RANK",
    "LOCAL_RANK",
    "NODE_RANK",
    "GROUP_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_WORLD_SIZE",
    "PJRT_DEVICE",
    "TPU_WORKER_ID",
    "CLOUD_TPU_TASK_ID",
)
_LAUNCHER_PREFIXES = ("SLURM_", "LSB_", "JSM_", "OMPI_COMM_WORLD", "PMI_", "MV2_", "XRT_", "TORCHELASTIC_")


@pytest.fixture(autouse=True)
def _no_launcher_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name in _LAUNCHER_VARIABLES or name.startswith(_LAUNCHER_PREFIXES):
            monkeypatch.delenv(name)
