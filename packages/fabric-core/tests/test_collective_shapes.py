"""A collective's result on one process has the shape (and dtype) of its result on several, less the world dimension.

The same calls run on one process (single device, and DDP with a world of one) and on two real gloo processes.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch

from fabric_core import Fabric
from fabric_strategies import DDPStrategy
from fabric_testing import run_processes
from fabric_utils import apply_to_collection

INPUTS: dict[str, Any] = {
    "scalar": torch.tensor(3),
    "vector": torch.arange(3.0),
    "matrix": torch.ones(2, 3, dtype=torch.int32),
    "collection": {"a": torch.tensor(1.0), "b": [torch.ones(2, dtype=torch.int64)], "label": "kept"},
}


def _describe(result: Any) -> Any:
    return apply_to_collection(result, torch.Tensor, lambda t: (tuple(t.shape), str(t.dtype)))


def _calls(fabric: Fabric) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, data in INPUTS.items():
        out[f"all_gather {name}"] = _describe(fabric.all_gather(data))
        for op in ("mean", "sum", "max"):
            out[f"all_reduce {op} {name}"] = _describe(fabric.all_reduce(data, reduce_op=op))
        out[f"broadcast {name}"] = _describe(fabric.broadcast(data))
    out["all_reduce number"] = _describe(fabric.all_reduce(4, reduce_op="sum"))
    return out


def _in_processes(rank: int, world_size: int) -> dict[str, Any]:
    fabric = Fabric(accelerator="cpu", devices=world_size, strategy=DDPStrategy(timeout=timedelta(seconds=60)))
    fabric.launch()
    return _calls(fabric)


def _with_world_dimension(description: Any, world_size: int) -> Any:
    return apply_to_collection(description, tuple, lambda d: ((world_size, *d[0]), d[1]))


def test_one_process_results_are_the_multi_process_results_less_the_world_dimension() -> None:
    single = _calls(Fabric(accelerator="cpu"))
    # all_gather on one process returns its input as it is
    tensor = torch.arange(3.0)
    assert Fabric(accelerator="cpu").all_gather(tensor) is tensor
    (ddp_alone,) = run_processes(_in_processes, world_size=1, init_process_group=False)
    assert ddp_alone == single
    pair = run_processes(_in_processes, init_process_group=False)
    assert pair[0] == pair[1]
    for key, description in single.items():
        expected = _with_world_dimension(description, 2) if key.startswith("all_gather") else description
        assert pair[0][key] == expected, key
