"""``XLALauncher``: one process per XLA device through ``torch_xla``'s ``xmp.spawn``."""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from torch import Tensor
from typing_extensions import override

from fabric_strategies.launchers.base import Launcher
from fabric_strategies.xla.runtime import is_interactive, require_xla, xla_model, xla_module, xla_runtime
from fabric_utils import apply_to_collection

if TYPE_CHECKING:
    from fabric_strategies.parallel import ParallelStrategy

_RESULT_FILE = "result.pkl"
_END_RENDEZVOUS = "fabric-xla-launcher-end"


class XLALauncher(Launcher):
    """Starts one process per XLA device with ``xmp.spawn`` and calls the function in each.

    Returns what the function returned in the process of local rank 0 (tensors moved to the CPU). torch_xla's
    spawn does not hand results back, so that process writes it to a temporary file this process reads. A process
    that raises makes ``xmp.spawn`` raise here. Processes are forked in a notebook or the REPL and spawned otherwise;
    with one device the function runs in this process.
    """

    def __init__(self, strategy: ParallelStrategy) -> None:
        require_xla(type(self).__name__)
        self._strategy = strategy
        self._start_method: Literal["fork", "spawn"] = "fork" if is_interactive() else "spawn"

    @property
    def start_method(self) -> str:
        return self._start_method

    @property
    @override
    def is_interactive_compatible(self) -> bool:
        return True

    @override
    def launch(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        xmp = xla_module("distributed.xla_multiprocessing")
        nprocs = self._strategy.num_processes
        # torch_xla accepts nprocs=1 (run here) or nothing (every device); other counts come from its environment
        spawn_kwargs: dict[str, Any] = {"nprocs": 1} if nprocs == 1 else {}
        with tempfile.TemporaryDirectory(prefix="fabric-xla-") as directory:
            result_path = os.path.join(directory, _RESULT_FILE)
            xmp.spawn(
                _run_process,
                args=(function, args, kwargs, result_path),
                start_method=self._start_method,
                **spawn_kwargs,
            )
            return _read_result(result_path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(start_method={self._start_method!r})"


def _run_process(
    process_index: int, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], result_path: str
) -> None:
    """The body of every launched process: run the function, let local rank 0 report its result, wait for all."""
    result = function(*args, **kwargs)
    if int(xla_runtime().local_ordinal()) == 0:
        _write_result(result, result_path)
    # no process leaves before every other one finished (an early exit can break their pending collectives)
    xla_model().rendezvous(_END_RENDEZVOUS)


def _write_result(result: Any, path: str) -> None:
    payload = pickle.dumps(apply_to_collection(result, Tensor, lambda t: t.detach().cpu()))
    partial = f"{path}.partial"
    with open(partial, "wb") as f:
        f.write(payload)
    os.replace(partial, path)


def _read_result(path: str) -> Any:
    if not os.path.exists(path):  # the function ran in no process of local rank 0 on this host
        return None
    with open(path, "rb") as f:
        return pickle.load(f)
