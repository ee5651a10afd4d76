"""``DeferredCopy``: the parameters and optimizer states are copied later, by a worker; until then every in-place
change of them on the caller's thread waits, forward and backward do not, and everything else is copied at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

from fabric_io import CpuStaging, DeferredCopy, SharedStaging, trained_storages
from fabric_io.shared_staging import shared_staging_available

DELAY = 0.4


class SlowStaging(CpuStaging):
    """Copies like ``CpuStaging`` after ``DELAY`` seconds (a worker that is slow to get to the copy)."""

    def copy(self, state: Any) -> Any:
        time.sleep(DELAY)
        return super().copy(state)


def _trained(fused: bool = False) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1, fused=fused)
    _step(model, optimizer)
    return model, optimizer


def _step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model(torch.randn(4, 8)).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def _checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 3}


def _clone(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return state.clone()
    if isinstance(state, dict):
        return {key: _clone(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_clone(value) for value in state)
    return state


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


class Worker:
    """Runs ``deferred.stage()`` in a thread."""

    def __init__(self, deferred: DeferredCopy) -> None:
        self.result: Any = None
        self._thread = threading.Thread(target=self._run, args=(deferred,))
        self._thread.start()

    def _run(self, deferred: DeferredCopy) -> None:
        self.result = deferred.stage()

    def join(self) -> Any:
        self._thread.join()
        return self.result


@pytest.fixture
def guarded() -> Iterator[Callable[..., tuple[DeferredCopy, Worker]]]:
    started: list[DeferredCopy] = []

    def start(checkpoint: Any, state: Any) -> tuple[DeferredCopy, Worker]:
        deferred, copy = DeferredCopy.start(checkpoint, trained_storages(state), CpuStaging(), SlowStaging())
        assert deferred is not None
        assert copy is None
        started.append(deferred)
        return deferred, Worker(deferred)

    yield start
    for deferred in started:
        deferred.release()
    assert torch._C._len_torch_function_stack() == 0, "the guard is gone once released"


def _mutations() -> dict[str, Callable[[nn.Module, torch.optim.Optimizer], None]]:
    def no_grad(call: Callable[[], object]) -> None:
        with torch.no_grad():
            call()

    first = lambda model: next(model.parameters())  # noqa: E731
    return {
        "in-place op under no_grad": lambda m, o: no_grad(lambda: first(m).mul_(0)),
        "through .data": lambda m, o: first(m).data.copy_(torch.zeros_like(first(m))),
        "item assignment": lambda m, o: no_grad(lambda: first(m).__setitem__(0, 5.0)),
        "augmented assignment": lambda m, o: no_grad(lambda: first(m).__iadd__(1.0)),
        "out=": lambda m, o: no_grad(lambda: torch.add(first(m), 1.0, out=first(m))),
        "foreach op": lambda m, o: no_grad(lambda: torch._foreach_mul_(list(m.parameters()), 0.5)),
        "optimizer state": lambda m, o: next(iter(o.state.values()))["exp_avg"].zero_(),
        "optimizer step": lambda m, o: _step(m, o),
    }


@pytest.mark.parametrize("mutation", list(_mutations()))
def test_a_change_of_a_deferred_tensor_waits_for_the_copy(guarded: Any, mutation: str) -> None:
    model, optimizer = _trained()
    checkpoint = _checkpoint(model, optimizer)
    expected = _clone(checkpoint)
    deferred, worker = guarded(checkpoint, {"model": model, "optimizer": optimizer})
    _mutations()[mutation](model, optimizer)
    assert deferred.staged.is_set(), "the change waited until the copy was complete"
    copy = worker.join()
    assert _same(copy, expected)
    assert not _same(_checkpoint(model, optimizer), expected), "the change was made"


def test_a_fused_optimizer_step_waits_too(guarded: Any) -> None:
    model, optimizer = _trained(fused=True)
    checkpoint = _checkpoint(model, optimizer)
    expected = _clone(checkpoint)
    deferred, worker = guarded(checkpoint, {"model": model, "optimizer": optimizer})
    _step(model, optimizer)
    assert deferred.staged.is_set()
    assert torch._C._len_torch_function_stack() == 0, "the optimizer step removed the guard"
    assert _same(worker.join(), expected)


def test_forward_and_backward_run_alongside_and_buffers_are_copied_at_once(guarded: Any) -> None:
    model, optimizer = _trained()
    checkpoint = _checkpoint(model, optimizer)
    expected = _clone(checkpoint)
    start = time.perf_counter()
    deferred, worker = guarded(checkpoint, {"model": model, "optimizer": optimizer})
    model(torch.randn(4, 8)).square().mean().backward()  # changes BatchNorm's running statistics in place
    assert not deferred.staged.is_set(), "forward and backward did not wait"
    assert time.perf_counter() - start < DELAY
    assert not torch.equal(model.state_dict()["1.running_mean"], expected["model"]["1.running_mean"])
    copy = worker.join()
    assert _same(copy, expected)
    assert type(copy["model"]) is type(checkpoint["model"])
    assert copy["model"]._metadata == checkpoint["model"]._metadata


def test_tied_tensors_stay_tied_and_other_tensors_are_not_deferred(guarded: Any) -> None:
    model, _optimizer = _trained()
    weight = model[0].weight
    checkpoint = {"model": model.state_dict(), "alias": weight.detach(), "pair": (weight.detach(), torch.ones(2))}
    deferred, worker = guarded(checkpoint, {"model": model})
    copy = worker.join()
    assert copy["alias"].untyped_storage().data_ptr() == copy["model"]["0.weight"].untyped_storage().data_ptr()
    assert isinstance(copy["pair"], tuple)
    assert torch.equal(copy["pair"][1], torch.ones(2))
    assert not deferred.touches([checkpoint["pair"][1]])


def test_everything_is_copied_at_once_without_trained_tensors_or_under_another_torch_function_mode() -> None:
    model, optimizer = _trained()
    checkpoint = _checkpoint(model, optimizer)
    deferred, copy = DeferredCopy.start(checkpoint, set(), CpuStaging(), CpuStaging())
    assert deferred is None
    assert _same(copy, checkpoint)
    with torch.device("cpu"):  # a TorchFunctionMode of torch's: the guard could not be taken off under it
        deferred, copy = DeferredCopy.start(
            checkpoint, trained_storages([model, optimizer]), CpuStaging(), CpuStaging()
        )
    assert deferred is None
    assert _same(copy, checkpoint)
    assert torch._C._len_torch_function_stack() == 0


@pytest.mark.parametrize(
    "staging",
    [CpuStaging, pytest.param(SharedStaging, marks=pytest.mark.skipif(not shared_staging_available(), reason="Linux"))],
)
def test_an_uncopyable_object_raises_before_anything_is_deferred(staging: type) -> None:
    model, _optimizer = _trained()
    with pytest.raises(TypeError, match="Could not copy the state"):
        DeferredCopy.start(
            {"model": model.state_dict(), "lock": threading.Lock()}, trained_storages(model), staging(), staging()
        )
    assert torch._C._len_torch_function_stack() == 0, "no guard was left behind"


def test_a_guard_below_another_torch_function_mode_stays_inert_until_that_mode_has_left(guarded: Any) -> None:
    model, optimizer = _trained()
    state = {"model": model, "optimizer": optimizer}
    deferred, worker = guarded(_checkpoint(model, optimizer), state)
    with torch.device("cpu"):  # entered after the save: its exit pops the top mode, so the guard must stay below
        deferred.release()
        assert torch._C._len_torch_function_stack() == 2
    assert torch._C._len_torch_function_stack() == 1, "torch.device's exit popped its own mode"
    worker.join()
    later, _ = DeferredCopy.start(_checkpoint(model, optimizer), trained_storages(state), CpuStaging(), CpuStaging())
    assert later is not None, "the next save took the inert guard off and deferred again"
    assert torch._C._len_torch_function_stack() == 1
    later.stage()
    later.release()
