"""The public surface of fabric_strategies is deliberate: removing a name must change this test.

``EXPECTED`` lists the names of part 1 (single device, DP, DDP, launchers, collectives, teardown); the sharded and
DeepSpeed/XLA strategies add their own names next to them.
"""

from __future__ import annotations

import fabric_strategies

EXPECTED = {
    "DEFAULT_TIMEOUT",
    "STRATEGY_REGISTRY",
    "Collective",
    "DDPStrategy",
    "DataParallelStrategy",
    "Launcher",
    "MissingStateKeyError",
    "MultiprocessingLauncher",
    "ParallelStrategy",
    "ProcessFailedError",
    "RemoteTraceback",
    "SingleDeviceCollective",
    "SingleDeviceStrategy",
    "Strategy",
    "SubprocessScriptLauncher",
    "TorchCollective",
    "all_gather_tensor",
    "all_reduce_tensor",
    "default_process_group_backend",
    "destroy_process_group_cleanly",
    "gather_all_tensors",
    "release_ddp_wrapper",
    "resolve_strategy_name",
    "unwrap_module",
}


def test_public_names_are_kept_and_importable():
    assert set(fabric_strategies.__all__) >= EXPECTED
    assert len(set(fabric_strategies.__all__)) == len(fabric_strategies.__all__)
    for name in fabric_strategies.__all__:
        assert getattr(fabric_strategies, name) is not None


def test_import_has_no_side_effects_on_the_environment():
    # A fresh interpreter: other tests in this session import deepspeed on purpose.
    import subprocess
    import sys

    code = (
        "import os, sys; before = dict(os.environ); import fabric_strategies; "
        "assert dict(os.environ) == before, 'environment changed'; "
        "heavy = [m for m in ('deepspeed', 'torch_xla', 'mpi4py') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
