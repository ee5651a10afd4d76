"""The Strategy base (through SingleDeviceStrategy, its simplest complete form): parts, training step, contexts."""

from __future__ import annotations

import warnings

import pytest
import torch
from typing_extensions import override

from fabric_accelerators import CPUAccelerator, CUDAAccelerator
from fabric_io import TorchCheckpointIO
from fabric_precision import DoublePrecision, MixedPrecision, Precision
from fabric_strategies import DDPStrategy, SingleDeviceStrategy, Strategy


class ScalingPrecision(Precision):
    """A precision that multiplies the loss by 4 before backward and counts optimizer steps and teardowns."""

    def __init__(self) -> None:
        self.steps = 0
        self.teardowns = 0
        self.unscaled = 0

    @override
    def pre_backward(self, tensor: torch.Tensor, module: torch.nn.Module | None) -> torch.Tensor:
        return tensor * 4

    @override
    def optimizer_step(self, optimizer, **kwargs):  # type: ignore[no-untyped-def]
        self.steps += 1
        return optimizer.step(**kwargs)

    @override
    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        self.unscaled += 1

    @override
    def teardown(self) -> None:
        self.teardowns += 1


class CountingIO(TorchCheckpointIO):
    def __init__(self) -> None:
        super().__init__()
        self.teardowns = 0

    @override
    def teardown(self) -> None:
        self.teardowns += 1


def test_parts_default_and_complete_never_overrides_given_parts():
    strategy = SingleDeviceStrategy()
    assert strategy.accelerator is None
    assert type(strategy.precision) is Precision
    assert isinstance(strategy.checkpoint_io, TorchCheckpointIO)
    accelerator, precision, io = CPUAccelerator(), DoublePrecision(), CountingIO()
    strategy.complete(accelerator=accelerator, precision=precision, checkpoint_io=io)
    assert (strategy.accelerator, strategy.precision, strategy.checkpoint_io) == (accelerator, precision, io)
    strategy.complete(accelerator=CPUAccelerator(), precision=Precision(), checkpoint_io=TorchCheckpointIO())
    assert (strategy.accelerator, strategy.precision, strategy.checkpoint_io) == (accelerator, precision, io)


def test_wrong_part_types_are_rejected():
    with pytest.raises(TypeError, match=r"accelerator.*'cpu'"):
        SingleDeviceStrategy(accelerator="cpu")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"precision"):
        SingleDeviceStrategy().complete(precision="32-true")  # type: ignore[arg-type]


def test_supported_precisions_are_enforced():
    class Only32(SingleDeviceStrategy):
        supported_precisions = ("32-true",)

    with pytest.raises(ValueError, match=r"Only32 does not support precision 'bf16-mixed'.*32-true"):
        Only32().default_precision("bf16-mixed")
    with pytest.raises(ValueError, match=r"'64-true'"):
        Only32(precision=DoublePrecision())
    assert type(Only32().default_precision("32-true")) is Precision


def test_default_precision_builds_the_plugin_for_the_root_device():
    plugin = SingleDeviceStrategy().default_precision("bf16-mixed")
    assert isinstance(plugin, MixedPrecision)
    assert plugin.precision == "bf16-mixed"
    with pytest.raises(ValueError, match=r"'fp8'"):
        SingleDeviceStrategy().default_precision("fp8")


def test_setup_environment_fills_the_accelerator_from_the_device():
    strategy = SingleDeviceStrategy("cpu")
    strategy.setup_environment()
    assert isinstance(strategy.accelerator, CPUAccelerator)


def test_backward_and_step_go_through_the_precision():
    precision = ScalingPrecision()
    strategy = SingleDeviceStrategy(precision=precision)
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    strategy.backward(model(torch.ones(1, 2)).sum(), model)
    assert model.weight.grad.tolist() == [[4.0, 4.0]]  # scaled by the plugin
    strategy.optimizer_step(optimizer)
    assert precision.steps == 1
    assert model.weight.tolist() == [[-3.0, -3.0]]


def test_clipping_by_norm_and_by_value_unscales_first_and_honours_error_if_nonfinite():
    precision = ScalingPrecision()
    strategy = SingleDeviceStrategy(precision=precision)
    model = torch.nn.Linear(2, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model.weight.grad = torch.tensor([[3.0, 4.0]])
    norm = strategy.clip_gradients_norm(model, optimizer, max_norm=1.0)
    assert norm.item() == pytest.approx(5.0)
    assert model.weight.grad.norm().item() == pytest.approx(1.0, rel=1e-4)
    model.weight.grad = torch.tensor([[3.0, -4.0]])
    strategy.clip_gradients_value(model, optimizer, clip_val=2.0)
    assert model.weight.grad.tolist() == [[2.0, -2.0]]
    assert precision.unscaled == 2
    model.weight.grad = torch.tensor([[float("inf"), 1.0]])
    with pytest.raises(RuntimeError, match=r"non-finite"):
        strategy.clip_gradients_norm(model, optimizer, max_norm=1.0, error_if_nonfinite=True)
    model.weight.grad = torch.tensor([[float("inf"), 1.0]])
    strategy.clip_gradients_norm(model, optimizer, max_norm=1.0, error_if_nonfinite=False)


def test_init_contexts_use_the_device_and_the_precision_and_can_skip_initialisation():
    strategy = SingleDeviceStrategy(precision=DoublePrecision())
    with strategy.tensor_init_context():
        tensor = torch.empty(2)
    assert tensor.dtype == torch.float64
    assert tensor.device.type == "cpu"
    torch.manual_seed(0)
    with strategy.module_init_context(empty_init=False):
        initialised = torch.nn.Linear(4, 4)
    torch.manual_seed(0)
    with strategy.module_init_context(empty_init=True):
        skipped = torch.nn.Linear(4, 4)
    assert initialised.weight.dtype == skipped.weight.dtype == torch.float64
    assert not torch.equal(initialised.weight, skipped.weight)
    assert torch.get_default_dtype() == torch.float32


def test_single_process_collectives_answer_locally_and_validate():
    strategy = SingleDeviceStrategy()
    tensor = torch.tensor([1.0, 2.0])
    reduced = strategy.all_reduce(tensor, reduce_op="sum")
    assert torch.equal(reduced, tensor)
    assert reduced is not tensor  # a new tensor, as with several processes
    assert strategy.all_reduce(torch.tensor([1, 2]), reduce_op="mean").dtype == torch.float64
    with pytest.raises(ValueError, match=r"'median'"):
        strategy.all_reduce(tensor, reduce_op="median")
    assert strategy.all_gather(tensor) is tensor
    assert strategy.broadcast({"a": 1}) == {"a": 1}
    with pytest.raises(ValueError, match=r"src=1"):
        strategy.broadcast(1, src=1)
    strategy.barrier("x")
    assert strategy.reduce_boolean_decision(False) is False
    assert strategy.distributed_sampler_kwargs is None
    assert strategy.launcher is None


def test_batch_to_device_and_process_dataloader():
    strategy = SingleDeviceStrategy()
    batch = {"x": torch.ones(1), "y": [torch.zeros(1)]}
    moved = strategy.batch_to_device(batch)
    assert moved["x"].device.type == "cpu"
    assert moved["y"][0].device.type == "cpu"
    loader = torch.utils.data.DataLoader([1, 2])
    assert strategy.process_dataloader(loader) is loader


def test_teardown_releases_every_part():
    precision, io = ScalingPrecision(), CountingIO()
    strategy = SingleDeviceStrategy(precision=precision, checkpoint_io=io, accelerator=CPUAccelerator())
    strategy.teardown()
    assert precision.teardowns == 1
    assert io.teardowns == 1


def test_strategy_is_abstract():
    with pytest.raises(TypeError, match=r"abstract"):
        Strategy()  # type: ignore[abstract]


@pytest.mark.parametrize("name", ["bf16-mixed", "16-mixed"])
def test_default_mixed_precision_autocasts_on_the_device_type_of_the_strategy(name: str) -> None:
    """On CUDA devices the default plugin autocasts for CUDA, not CPU (no CUDA needed: nothing runs on the device)."""
    single = SingleDeviceStrategy(device="cuda:0", accelerator=CUDAAccelerator())
    parallel = DDPStrategy(accelerator=CUDAAccelerator())
    parallel.complete(parallel_devices=[torch.device("cuda", 0), torch.device("cuda", 1)], num_nodes=1)
    for strategy in (single, parallel):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a GradScaler for CUDA warns on a machine without CUDA
            plugin = strategy.default_precision(name)
        assert isinstance(plugin, MixedPrecision)
        assert (plugin.precision, plugin.device_type) == (name, "cuda")
    on_cpu = SingleDeviceStrategy(accelerator=CPUAccelerator()).default_precision(name)
    assert isinstance(on_cpu, MixedPrecision)
    assert on_cpu.device_type == "cpu"
