"""``import fabric_core`` stays light: optional and rarely used modules are imported when first used.

benchmarks/README.md measures the import against ``import torch``; this test keeps the modules that made it slow
from coming back into the import.
"""

from __future__ import annotations

import subprocess
import sys

#: modules ``import fabric_core`` must not import: optional dependencies, the CLI, and the parts that load on use
NOT_AT_IMPORT = (
    "click",
    "deepspeed",
    "fsspec",
    "libcst",
    "mpi4py",
    "packaging.version",
    "tensorboardX",
    "torch_xla",
    "torch.utils.flop_counter",
    "fabric_core.cli",
    "fabric_loggers",
    "fabric_io.deferred",
    "fabric_io.xla",
    "fabric_precision.bitsandbytes",
    "fabric_precision.deepspeed",
    "fabric_precision.fsdp",
    "fabric_precision.xla",
    "fabric_strategies.deepspeed",
    "fabric_strategies.fsdp",
    "fabric_strategies.model_parallel",
    "fabric_strategies.xla",
)


def _modules_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(sorted(m for m in {NOT_AT_IMPORT!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return eval(result.stdout.strip().splitlines()[-1])


def test_import_leaves_optional_and_on_use_modules_out() -> None:
    assert _modules_after("import fabric_core") == []


def test_a_single_device_step_stays_light_and_a_sharded_name_loads_only_its_module() -> None:
    step = (
        "import torch, fabric_core\n"
        "fabric = fabric_core.Fabric(accelerator='cpu', devices=1)\n"
        "module = torch.nn.Linear(2, 2)\n"
        "model, optimizer = fabric.setup(module, torch.optim.SGD(module.parameters(), lr=0.1))\n"
        "fabric.backward(model(torch.ones(1, 2)).sum())\n"
        "optimizer.step()\n"
    )
    assert _modules_after(step) == []
    plan = "import fabric_core\nfabric_core.resolve_plan(accelerator='cpu', strategy='fsdp', devices=2)"
    assert _modules_after(plan) == ["fabric_precision.fsdp", "fabric_strategies.fsdp"]
