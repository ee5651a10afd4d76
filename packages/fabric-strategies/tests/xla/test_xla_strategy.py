"""XLAStrategy against the fake torch_xla (CPU tensors, one process that pretends to be one of two mirror replicas)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fabric_environments import LightningEnvironment, XLAEnvironment
from fabric_precision import MixedPrecision, XLAPrecision
from fabric_strategies import STRATEGY_REGISTRY, XLALauncher, XLAStrategy
from fabric_strategies.xla import runtime
from fabric_testing import TinyMLP
from fabric_utils import MissingDependencyError, override_hardware


def test_requires_torch_xla() -> None:
    with override_hardware(xla_available=False):
        with pytest.raises(MissingDependencyError, match=r"XLAStrategy requires `torch-xla`.*pip install torch-xla"):
            XLAStrategy()
        with pytest.raises(MissingDependencyError, match="pip install torch-xla"):
            STRATEGY_REGISTRY.create("xla")


def test_nothing_touches_the_runtime_before_launch(fake_xla: ModuleType) -> None:
    strategy = XLAStrategy(parallel_devices=[torch.device("xla", 0), torch.device("xla", 1)])
    assert (strategy.world_size, strategy.global_rank, strategy.local_rank, strategy.node_rank) == (1, 0, 0, 0)
    assert strategy.root_device == torch.device("xla", 0)
    assert strategy.num_processes == 2
    assert isinstance(strategy.cluster_environment, XLAEnvironment)
    strategy.complete(cluster_environment=LightningEnvironment(), num_nodes=1)
    assert isinstance(strategy.cluster_environment, XLAEnvironment), "the runtime owns the ranks"
    assert isinstance(strategy.launcher, XLALauncher)
    assert isinstance(strategy.precision, XLAPrecision)
    assert strategy.all_reduce(torch.tensor(3.0), reduce_op="sum").item() == 3.0
    assert strategy.broadcast({"a": 1}) == {"a": 1}
    strategy.barrier()
    assert fake_xla.state.calls == [], "no torch_xla call before the processes exist"


def test_precisions(fake_xla: ModuleType) -> None:
    strategy = XLAStrategy()
    assert strategy.default_precision("bf16-true").precision == "bf16-true"
    with pytest.raises(ValueError, match=r"does not support precision 'bf16-mixed'. Choose one of: 32-true, 16-true"):
        strategy.default_precision("bf16-mixed")
    with pytest.raises(TypeError, match="needs an XLAPrecision plugin"):
        XLAStrategy(precision=MixedPrecision("bf16-mixed", device_type="cpu"))
    with pytest.raises(TypeError, match="needs an XLAPrecision plugin"):
        XLAStrategy().complete(precision=MixedPrecision("bf16-mixed", device_type="cpu"))


def _train(strategy: XLAStrategy, directory: str) -> dict[str, Any]:
    """What a launched process does: set up, train a step, use every collective, checkpoint."""
    strategy.setup_environment()
    torch.manual_seed(0)
    model = strategy.setup_module(TinyMLP(4, 8, 2))
    strategy.module_to_device(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = TensorDataset(torch.randn(8, 4), torch.randn(8, 2))
    loader = strategy.process_dataloader(DataLoader(data, batch_size=4))
    before = [p.detach().clone() for p in model.parameters()]
    for x, y in loader:
        loss = torch.nn.functional.mse_loss(model(x), y)
        strategy.backward(loss, model)
        strategy.optimizer_step(optimizer)
        optimizer.zero_grad()
    trained = not any(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    value = torch.tensor([1.0, 4.0])
    leaf = torch.ones(3, requires_grad=True)
    gathered_with_grad = strategy.all_gather(leaf * 2, sync_grads=True)
    gathered_with_grad.sum().backward()
    strategy.save_checkpoint(Path(directory) / "ckpt.pt", {"model": model, "step": 4})
    loaded = strategy.load_checkpoint(Path(directory) / "ckpt.pt")
    return {
        "trained": trained,
        "loader": loader,
        "dataset": loader.dataset,
        "sum": strategy.all_reduce(value, reduce_op="sum"),
        "mean": strategy.all_reduce(value, reduce_op="mean"),
        "max": strategy.all_reduce(value, reduce_op="max"),
        "gathered": strategy.all_gather(torch.arange(3.0)),
        "scalar": strategy.all_gather(torch.tensor(5.0)),
        "grad": leaf.grad,
        "broadcast": strategy.broadcast({"step": 3, "weights": torch.ones(2)}, src=0),
        "decision": strategy.reduce_boolean_decision(True),
        "step": loaded["step"],
        "ranks": (strategy.world_size, strategy.global_rank, strategy.root_device),
    }


def test_a_launched_process_trains_and_communicates(fake_xla: ModuleType, tmp_path: Path) -> None:
    fake_xla.state.world_size = 2
    strategy = XLAStrategy()
    result = strategy.launcher.launch(_train, strategy, str(tmp_path))  # type: ignore[union-attr]
    calls = fake_xla.state.names()
    assert fake_xla.state.arguments("spawn") == [{"nprocs": 1, "start_method": "spawn"}]
    assert "broadcast_master_param" in calls, "sync_module_states gives every replica rank 0's weights"
    assert len(fake_xla.state.arguments("optimizer_step")) == 2, "gradients are reduced in each optimizer step"
    assert result["trained"]
    assert result["dataset"] is result["loader"]._loader.dataset
    assert result["ranks"] == (2, 0, torch.device("cpu"))
    # the other replica mirrors this one: sums double, means and maxima stay
    assert result["sum"].tolist() == [2.0, 8.0]
    assert result["mean"].tolist() == [1.0, 4.0]
    assert result["max"].tolist() == [1.0, 4.0]
    reduce_types = [call["reduce_type"] for call in fake_xla.state.arguments("all_reduce")]
    assert {"sum", "max"} <= set(reduce_types)
    assert result["gathered"].tolist() == [[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]], "stacked along a new dimension"
    assert result["scalar"].tolist() == [5.0, 5.0]
    assert result["grad"].tolist() == [4.0, 4.0, 4.0], "sync_grads: gradients flow through the gather"
    assert "functions.all_gather" in calls
    assert result["broadcast"]["step"] == 3
    assert torch.equal(result["broadcast"]["weights"], torch.ones(2))
    assert [c["root_ordinal"] for c in fake_xla.state.arguments("collective_broadcast")] == [0, 0], "size, then data"
    assert result["decision"] is True
    assert result["step"] == 4
    assert "sync" in calls, "pending work ran before the checkpoint"
    assert "fabric-xla-launcher-end" in fake_xla.state.arguments("rendezvous")
    strategy.teardown()
    assert strategy.launched is False


def test_teardown_forgets_the_launch(fake_xla: ModuleType) -> None:
    fake_xla.state.world_size = 2
    strategy = XLAStrategy()
    strategy.setup_environment()
    assert strategy.world_size == 2
    strategy.teardown()
    assert strategy.world_size == 1
    assert not strategy.launched


def test_all_gather_returns_each_tensor_when_shapes_differ(
    fake_xla: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other replica holds a (1, 3) tensor while this one holds (2, 3): scripted answers of the three gathers."""
    fake_xla.state.world_size = 2
    xm = runtime.xla_model()
    mine = torch.arange(6.0).reshape(2, 3)
    theirs = torch.tensor([[9.0, 8.0, 7.0]])
    answers = iter(
        [
            torch.tensor([2, 2]),  # number of dimensions
            torch.tensor([[2, 3], [1, 3]]),  # shapes
            torch.stack([mine.flatten(), torch.nn.functional.pad(theirs.flatten(), (0, 3))]),  # padded data
        ]
    )
    monkeypatch.setattr(xm, "all_gather", lambda value, dim=0, **kwargs: next(answers))
    gathered = runtime.all_gather(mine, world_size=2)
    assert isinstance(gathered, list)
    assert torch.equal(gathered[0], mine)
    assert torch.equal(gathered[1], theirs)


def test_broadcast_receives_the_object_of_another_rank(fake_xla: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 1 sends; this process (rank 0) receives: a scripted collective_broadcast delivers rank 1's bytes."""
    import pickle

    sent = {"epoch": 2, "weights": torch.arange(3.0)}
    payload = torch.frombuffer(bytearray(pickle.dumps(sent)), dtype=torch.uint8).to(torch.int32)
    deliveries = iter([torch.tensor([payload.numel()], dtype=torch.int32), payload])
    roots: list[int] = []

    def collective_broadcast(tensors: list[torch.Tensor], root_ordinal: int = 0, **kwargs: Any) -> None:
        roots.append(root_ordinal)
        tensors[0].copy_(next(deliveries))

    monkeypatch.setattr(runtime.xla_model(), "collective_broadcast", collective_broadcast)
    received = runtime.broadcast_object({"epoch": 0}, src=1, rank=0, device=torch.device("cpu"))
    assert roots == [1, 1]
    assert received["epoch"] == 2
    assert torch.equal(received["weights"], sent["weights"])


def test_unknown_reduce_op_is_named_on_every_path(fake_xla: ModuleType) -> None:
    fake_xla.state.world_size = 2
    strategy = XLAStrategy()
    with pytest.raises(ValueError, match="Unknown reduce_op 'median'"):
        strategy.all_reduce(torch.ones(1), reduce_op="median")
    strategy.setup_environment()
    with pytest.raises(ValueError, match="Unknown reduce_op 'median'"):
        strategy.all_reduce(torch.ones(1), reduce_op="median")
    with pytest.raises(ValueError, match="src=2 is not a rank"):
        strategy.broadcast(1, src=2)
    strategy.teardown()


def test_interactive_sessions_fork(fake_xla: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.ps1", ">>> ", raising=False)
    launcher = XLALauncher(XLAStrategy())
    assert launcher.start_method == "fork"
    assert launcher.is_interactive_compatible
    assert launcher.launch(lambda: 7) == 7
    assert fake_xla.state.arguments("spawn") == [{"nprocs": 1, "start_method": "fork"}]


def test_every_device_is_spawned_and_only_local_rank_0_reports(fake_xla: ModuleType) -> None:
    strategy = XLAStrategy(parallel_devices=[torch.device("xla", i) for i in range(4)])
    assert XLALauncher(strategy).launch(lambda: torch.ones(2)).tolist() == [1.0, 1.0]
    assert fake_xla.state.arguments("spawn") == [{"nprocs": None, "start_method": "spawn"}]
    fake_xla.state.local_ordinal = 1
    assert XLALauncher(strategy).launch(lambda: "from local rank 1") is None


def test_an_exception_in_the_launched_function_reaches_the_caller(fake_xla: ModuleType) -> None:
    def fail() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        XLALauncher(XLAStrategy()).launch(fail)
