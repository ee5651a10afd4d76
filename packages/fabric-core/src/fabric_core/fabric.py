"""``Fabric``, the one object a training script talks to; thin, it delegates to the parts the connector built."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from fabric_accelerators import Accelerator
from fabric_core.callbacks import HookCaller, collect_callbacks
from fabric_core.compile import Compilation, split_compiled
from fabric_core.connector import AcceleratorFlag, Plugin, StrategyFlag, build, is_interactive, resolve_plan
from fabric_core.data import numbers_to_tensors, setup_dataloader
from fabric_core.preemption import Preemption, SignalLike
from fabric_core.progress import OpenBars, Progress
from fabric_core.validation import (
    ReplacedParameters,
    check_bool,
    check_clip_arguments,
    check_loggers,
    check_metrics,
    check_optimizers_own_parameters,
    check_optional_bool,
    check_path_first,
    check_save_state,
    check_setup_dataloaders,
    check_setup_module,
    check_setup_optimizers,
)
from fabric_core.wrappers import FabricModule, FabricOptimizer, hand_back_loaded, unwrap, unwrap_state
from fabric_strategies import AsyncSave, Launcher, Strategy, call_at_exit, save_state, wait_for_saves
from fabric_utils import (
    Logger,
    PathLike,
    apply_to_collection,
    check_reduce_op,
    convert_tensors_to_scalars,
    rank_zero_only,
)
from fabric_utils import seed_everything as _seed_everything

T = TypeVar("T")


class Fabric:
    """Scale a PyTorch training loop to any devices, nodes, precision and strategy; the loop stays yours.

    Arguments (keyword only): ``accelerator``, ``strategy``, ``devices``, ``num_nodes``, ``precision``, ``plugins``,
    ``callbacks``, ``loggers``. Arguments left at their defaults are filled from the ``FABRIC_*`` environment
    variables that ``fabric run`` sets; an explicit argument that contradicts them raises.
    """

    def __init__(
        self,
        *,
        accelerator: AcceleratorFlag = "auto",
        strategy: StrategyFlag = "auto",
        devices: list[int] | str | int = "auto",
        num_nodes: int = 1,
        precision: str | int | None = None,
        plugins: Plugin | Sequence[Plugin] | None = None,
        callbacks: Any = None,
        loggers: Logger | Sequence[Logger] | None = None,
    ) -> None:
        self._callbacks = collect_callbacks(callbacks)  # checked first: a mistake here needs nothing else built
        self._loggers = check_loggers(loggers)
        plan = resolve_plan(
            accelerator=accelerator,
            strategy=strategy,
            devices=devices,
            num_nodes=num_nodes,
            precision=precision,
            plugins=plugins,
        )
        parts = build(plan)
        self._plan = plan
        self._accelerator = parts.accelerator
        self._strategy = parts.strategy
        self._precision = parts.precision
        self._cluster_environment = parts.cluster_environment
        self._hooks = HookCaller()
        self._environment_ready = False
        self._models_setup = 0
        # what `backward` passes to the strategy without model=...: the one set-up model's forward module (None once
        # several models are set up: the strategy must then be told which one, e.g. DeepSpeed)
        self._backward_module: nn.Module | None = None
        self._set_up: weakref.WeakSet[Any] = weakref.WeakSet()
        self._replaced = ReplacedParameters()
        self._preemption = Preemption()
        self._open_bars = OpenBars()  # this process's open fabric.progress bars: log_dict shows them the metrics
        if type(self).run is not Fabric.run:
            # calling `fabric.run(...)` launches the processes and runs the subclass's `run` in each of them
            self.run = functools.partial(self.launch, type(self).run)  # type: ignore[method-assign]

    # -- properties ----------------------------------------------------------------------------------------------
    @property
    def accelerator(self) -> Accelerator:
        return self._accelerator

    @property
    def strategy(self) -> Strategy:
        return self._strategy

    @property
    def device(self) -> torch.device:
        """The device of this process."""
        return self._strategy.root_device

    @property
    def global_rank(self) -> int:
        return self._strategy.global_rank

    @property
    def local_rank(self) -> int:
        return self._strategy.local_rank

    @property
    def node_rank(self) -> int:
        return self._strategy.node_rank

    @property
    def world_size(self) -> int:
        return self._strategy.world_size

    @property
    def is_global_zero(self) -> bool:
        return self._strategy.is_global_zero

    @property
    def loggers(self) -> list[Logger]:
        return list(self._loggers)

    @property
    def logger(self) -> Logger | None:
        """The first logger (the main one), or None without loggers."""
        return self._loggers[0] if self._loggers else None

    @property
    def preempted(self) -> bool:
        """True in every process once any got a preemption signal: save and stop. A collective (see launching.md)."""
        self._ensure_launched()
        return self._preemption.check(self._strategy)

    def watch_preemption(self, *signals: SignalLike, check_every: int = 1) -> None:
        """Let :attr:`preempted` see ``signals`` too (e.g. "SIGTERM"); agree every ``check_every``-th read."""
        self._preemption.request(signals, check_every, install=self._environment_ready)

    # -- launching -----------------------------------------------------------------------------------------------
    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Override in a subclass; calling ``fabric.run(...)`` then launches the processes and runs it in each."""
        raise NotImplementedError(
            f"{type(self).__name__}.run is not implemented: override run() in a subclass, or pass your function to"
            " fabric.launch(function)."
        )

    def launch(self, function: Callable[..., Any] | None = None, *args: Any, **kwargs: Any) -> Any:
        """Start the processes of the run (when fabric must) and set up the process group; then call ``function``.

        ``function(fabric, *args, **kwargs)`` is called in every process. In a process that was started by
        ``fabric run``, torchrun, SLURM, MPI or LSF, this only joins the existing processes.
        """
        if function is not None and not callable(function):
            raise TypeError(f"fabric.launch(function) needs a callable, got {function!r}")
        launcher = self._launcher_to_start()
        if self._environment_ready or launcher is None:
            return self._run_with_setup(function, *args, **kwargs)
        if is_interactive() and not launcher.is_interactive_compatible:
            raise RuntimeError(
                f"strategy={self._plan.strategy!r} cannot start processes from an interactive session (notebook or"
                " REPL). Run the code as a script, or use strategy='ddp_notebook' (or 'dp' on GPUs)."
            )
        if function is None and not launcher.reruns_script:
            raise TypeError(
                f"To start processes with strategy={self._plan.strategy!r}, pass the function to run in each of"
                " them: fabric.launch(train), where train(fabric, ...) holds the training code."
            )
        return launcher.launch(self._run_with_setup, function, *args, **kwargs)

    def _run_with_setup(self, function: Callable[..., Any] | None, *args: Any, **kwargs: Any) -> Any:
        self._join()
        return None if function is None else function(self, *args, **kwargs)

    def _join(self) -> None:
        """Set up this process's device and process group (once)."""
        if self._environment_ready:
            return
        self._strategy.setup_environment()
        self._environment_ready = True
        rank_zero_only.rank = self.global_rank
        self._preemption.start(self._cluster_environment.preemption_signals())  # e.g. Slurm's SIGUSR1
        # finish pending work (e.g. an asynchronous checkpoint save) and leave the process group cleanly at exit, after
        # the script's own atexit handlers (one of them may destroy the process group itself)
        call_at_exit(_teardown_at_exit, weakref.ref(self._strategy))

    def _launcher_to_start(self) -> Launcher | None:
        """The launcher, when this process must start the others (not when fabric run, torchrun... started it)."""
        external = self._cluster_environment.creates_processes_externally
        return None if external else self._strategy.launcher

    def _ensure_launched(self) -> None:
        if self._environment_ready:
            return
        if self._launcher_to_start() is None:
            self._join()
            return
        raise RuntimeError(
            f"strategy={self._plan.strategy!r} with {self._plan.num_processes * self._plan.num_nodes} processes"
            " needs the processes started first: call fabric.launch() before setup, collectives, checkpoints or"
            " init_module (or run the script with `fabric run`)."
        )

    # -- set-up --------------------------------------------------------------------------------------------------
    def setup(self, module: nn.Module, *optimizers: Optimizer, move_to_device: bool = True) -> Any:
        """Set up a model and its optimizers for the strategy and precision; return the wrapped objects."""
        fabric_module, fabric_optimizers = self._setup("setup", module, optimizers, move_to_device)
        return (fabric_module, *fabric_optimizers) if optimizers else fabric_module

    def setup_module(self, module: nn.Module, move_to_device: bool = True) -> FabricModule:
        """Set up a model alone (optimizers can follow with :meth:`setup_optimizers`, e.g. after FSDP sharding)."""
        return self._setup("setup_module", module, (), move_to_device)[0]

    def _setup(
        self, caller: str, module: nn.Module, optimizers: Sequence[Optimizer], move_to_device: bool
    ) -> tuple[FabricModule, list[FabricOptimizer]]:
        check_bool(caller, move_to_device=move_to_device)
        module, compilation = split_compiled(module)  # compiled again after the strategy wraps it
        check_setup_module(module, self._set_up)
        check_setup_optimizers(optimizers, self._set_up)
        check_optimizers_own_parameters(module, optimizers)
        self._ensure_launched()
        original, before = module, list(module.parameters())
        module = self._precision.convert_module(module)
        if move_to_device:
            self._strategy.module_to_device(module)
        if optimizers:
            module, wrapped_optimizers = self._strategy.setup_module_and_optimizers(module, list(optimizers))
        else:
            module, wrapped_optimizers = self._strategy.setup_module(module), []
        fabric_module = self._wrap_module(module, original, before, compilation)
        return fabric_module, [self._wrap_optimizer(o, given) for o, given in zip(wrapped_optimizers, optimizers)]

    def setup_optimizers(self, *optimizers: Optimizer) -> Any:
        """Set up optimizers (of models already set up); returns one wrapper, or a tuple for several."""
        if not optimizers:
            raise ValueError("setup_optimizers needs at least one optimizer")
        check_setup_optimizers(optimizers, self._set_up)
        self._replaced.check(optimizers)
        self._ensure_launched()
        wrapped = [self._wrap_optimizer(self._strategy.setup_optimizer(o), o) for o in optimizers]
        return wrapped[0] if len(wrapped) == 1 else tuple(wrapped)

    def setup_dataloaders(
        self, *dataloaders: DataLoader, use_distributed_sampler: bool = True, move_to_device: bool = True
    ) -> Any:
        """Shard each DataLoader across processes (re-created with a distributed sampler) and wrap it."""
        check_setup_dataloaders(
            dataloaders, use_distributed_sampler=use_distributed_sampler, move_to_device=move_to_device
        )
        self._ensure_launched()
        device = self.device if move_to_device else None
        wrapped = [setup_dataloader(self._strategy, d, use_distributed_sampler, device) for d in dataloaders]
        return wrapped[0] if len(wrapped) == 1 else tuple(wrapped)

    def _wrap_module(
        self, module: nn.Module, original: nn.Module, before: Sequence[torch.Tensor], compilation: Compilation | None
    ) -> FabricModule:
        self._replaced.record(before, original, module)
        self._set_up.add(original)
        self._models_setup += 1
        self._backward_module = module if self._models_setup == 1 else None
        if hasattr(original, "_fabric"):  # LightningModule protocol: its self.log / self.fabric reach this Fabric
            original._fabric = self  # type: ignore[assignment]  # nn.Module's __getattr__ types it as a tensor
        compiled = compilation.apply(module) if compilation is not None else None
        return FabricModule(module, self._precision, original_module=original, compiled_module=compiled)

    def _wrap_optimizer(self, optimizer: Optimizer, given: Optimizer) -> FabricOptimizer:
        self._set_up.add(given)
        return FabricOptimizer(optimizer, self._strategy, self._callbacks)

    def mark_forward_method(self, module: FabricModule, method: str | Callable[..., Any]) -> None:
        """Route ``module.<method>`` through the strategy's wrapper and the precision, like ``forward``."""
        if not isinstance(module, FabricModule):
            raise TypeError(f"mark_forward_method needs a model returned by fabric.setup, got {type(module).__name__}")
        module.mark_forward_method(method)

    # -- training step -------------------------------------------------------------------------------------------
    def backward(self, tensor: torch.Tensor, *args: Any, model: FabricModule | None = None, **kwargs: Any) -> None:
        """``loss.backward()`` through the precision (loss scaling) and the strategy."""
        if model is not None and not isinstance(model, FabricModule):
            raise TypeError(f"backward(model=...) needs a model returned by fabric.setup, got {type(model).__name__}")
        module = model.forward_module if model is not None else self._backward_module
        self._strategy.backward(tensor, module, *args, **kwargs)

    def clip_gradients(
        self,
        module: nn.Module,
        optimizer: Optimizer,
        clip_val: float | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor | None:
        """Clip gradients by value (``clip_val``) or by total norm (``max_norm``; returns the norm). Give one."""
        check_clip_arguments(clip_val, max_norm, norm_type, error_if_nonfinite)
        module, optimizer = unwrap(module), unwrap(optimizer)
        if clip_val is not None:
            self._strategy.clip_gradients_value(module, optimizer, clip_val=clip_val)
            return None
        assert max_norm is not None
        return self._strategy.clip_gradients_norm(
            module, optimizer, max_norm=max_norm, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite
        )

    def autocast(self) -> AbstractContextManager[Any]:
        """The precision's forward context (autocast for mixed precision) for code outside the wrapped forward."""
        return self._precision.forward_context()

    def no_backward_sync(self, module: FabricModule, enabled: bool = True) -> AbstractContextManager[Any]:
        """Skip the gradient synchronisation of backward calls inside the block (gradient accumulation)."""
        if not isinstance(module, FabricModule):
            raise TypeError(f"no_backward_sync needs the model returned by fabric.setup, got {type(module).__name__}")
        check_bool("no_backward_sync", enabled=enabled)
        if not enabled:
            return nullcontext()
        return self._strategy.no_backward_sync(module.forward_module, enabled)

    # -- utilities -----------------------------------------------------------------------------------------------
    def to_device(self, obj: Any) -> Any:
        """Move a module (in place) or the tensors of a collection to this process's device."""
        if isinstance(obj, nn.Module):
            self._strategy.module_to_device(obj)
            return obj
        return self._strategy.batch_to_device(obj, self.device)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on local rank 0 only."""
        if self.local_rank == 0:
            print(*args, **kwargs)

    def progress(self, iterable: Iterable[T], **options: Any) -> Progress[T]:
        """Loop over ``iterable`` with a progress bar on global rank 0 (it/s, time left, the last logged metrics);
        plain lines when the output is not a terminal. Options: desc, total, interval, file, metrics, disable."""
        return Progress(iterable, show=self.is_global_zero, open_bars=self._open_bars, **options)

    @staticmethod
    def seed_everything(seed: int | None = None, workers: bool = True, verbose: bool = True) -> int:
        """Seed Python, NumPy and torch (and, with ``workers``, every dataloader worker); returns the seed."""
        check_bool("seed_everything", workers=workers, verbose=verbose)
        return _seed_everything(seed, workers=workers, verbose=verbose)

    # -- collectives ---------------------------------------------------------------------------------------------
    def barrier(self, name: str | None = None) -> None:
        self._ensure_launched()
        self._strategy.barrier(name=name)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        self._ensure_launched()
        return self._strategy.broadcast(obj, src=src)

    def all_gather(self, data: Any, group: Any | None = None, sync_grads: bool = False) -> Any:
        """Gather a tensor (or each tensor of a collection) from every process, stacked on a new first dimension;
        a tensor whose shape differs comes back as a list of each process's; with one process, no dimension is added."""
        check_bool("all_gather", sync_grads=sync_grads)
        self._ensure_launched()
        data = numbers_to_tensors(data, self.device)
        return apply_to_collection(data, torch.Tensor, self._strategy.all_gather, group=group, sync_grads=sync_grads)

    def all_reduce(self, data: Any, group: Any | None = None, reduce_op: Any = "mean") -> Any:
        """Reduce a tensor (or each tensor of a collection) across processes with ``reduce_op``."""
        check_reduce_op(reduce_op)
        self._ensure_launched()
        data = numbers_to_tensors(data, self.device)
        return apply_to_collection(data, torch.Tensor, self._strategy.all_reduce, group=group, reduce_op=reduce_op)

    def rank_zero_first(self, local: bool = False) -> AbstractContextManager[None]:
        """Run the block on (local) rank 0 first, then on the other processes (e.g. to download data once)."""
        check_bool("rank_zero_first", local=local)
        return self._rank_zero_first(local)

    @contextmanager
    def _rank_zero_first(self, local: bool) -> Generator[None, None, None]:
        self._ensure_launched()
        rank = self.local_rank if local else self.global_rank
        if rank > 0:
            self.barrier("rank_zero_first:wait")
        yield
        if rank == 0:
            self.barrier("rank_zero_first:wait")

    # -- initialisation contexts ---------------------------------------------------------------------------------
    def init_tensor(self) -> AbstractContextManager[Any]:
        """Tensors created inside get the precision's dtype (and the strategy's device)."""
        return self._strategy.tensor_init_context()

    def init_module(self, empty_init: bool | None = None) -> AbstractContextManager[Any]:
        """Modules created inside get the precision's dtype and device; ``empty_init`` skips weight initialisation
        (meta device / ZeRO-3 where the strategy shards)."""
        check_optional_bool("init_module", empty_init=empty_init)
        self._ensure_launched()
        return self._strategy.module_init_context(empty_init=empty_init)

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def save(
        self,
        path: PathLike,
        state: dict[str, Any],
        filter: dict[str, Callable[[str, Any], bool]] | None = None,
        *,
        asynchronous: bool = False,
    ) -> AsyncSave | None:
        """Save ``state`` (modules, optimizers, stateful objects, plain data) to ``path`` through the strategy;
        ``asynchronous=True`` returns once the state is copied and writes it in the background (checkpoints.md)."""
        check_save_state(path, state)
        check_bool("save", asynchronous=asynchronous)
        self._ensure_launched()
        return save_state(self._strategy, path, unwrap_state(state), filter=filter, asynchronous=asynchronous)

    def load(
        self,
        path: PathLike,
        state: dict[str, Any] | None = None,
        strict: bool = True,
        *,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Restore the objects of ``state`` in place from ``path``; return what the checkpoint held that ``state``
        did not take (everything, when ``state`` is None)."""
        check_path_first("load", path, state, "state")
        if state is not None and not isinstance(state, dict):
            raise TypeError(f"fabric.load(state=...) must be a dict or None, got {type(state).__name__}")
        check_bool("load", strict=strict)
        check_optional_bool("load", weights_only=weights_only)
        self._ensure_launched()
        unwrapped = unwrap_state(state) if state is not None else None
        wait_for_saves(self._strategy)
        remainder = self._strategy.load_checkpoint(path, unwrapped, strict=strict, weights_only=weights_only)
        self._strategy.barrier()
        if state is not None and unwrapped is not None:
            hand_back_loaded(state, unwrapped)  # plain data restored into the copy
        return remainder

    def load_raw(
        self, path: PathLike, obj: nn.Module | Optimizer, strict: bool = True, *, weights_only: bool | None = None
    ) -> None:
        """Load a file that holds the raw state dict of one module or optimizer (e.g. from plain ``torch.save``)."""
        check_path_first("load_raw", path, obj, "obj")
        obj = unwrap(obj)
        if not isinstance(obj, (nn.Module, Optimizer)):
            raise TypeError(f"load_raw needs a module or an optimizer, got {type(obj).__name__}")
        check_bool("load_raw", strict=strict)
        check_optional_bool("load_raw", weights_only=weights_only)
        self._ensure_launched()
        wait_for_saves(self._strategy)
        self._strategy.load_checkpoint(path, obj, strict=strict, weights_only=weights_only)

    # -- callbacks and logging -----------------------------------------------------------------------------------
    def call(self, hook_name: str, *args: Any, **kwargs: Any) -> None:
        """Call ``hook_name`` on every callback that has it, with the keyword arguments its signature accepts."""
        self._hooks.call(self._callbacks, hook_name, *args, **kwargs)

    def log(self, name: str, value: Any, step: int | None = None) -> None:
        """Log one metric to every logger."""
        self.log_dict({name: value}, step=step)

    def log_dict(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log several metrics to every logger (one-element tensors become numbers)."""
        check_metrics(metrics, step)
        if self._open_bars:
            self._open_bars.record(metrics)
        if not self._loggers:
            return
        metrics = convert_tensors_to_scalars(dict(metrics))
        for logger in self._loggers:
            logger.log_metrics(metrics=metrics, step=step)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_set_up"] = None  # weak references do not travel to spawned processes
        state["_backward_module"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["_set_up"] = weakref.WeakSet()
        self.__dict__.update(state)


def _teardown_at_exit(strategy_ref: weakref.ref[Strategy]) -> None:
    strategy = strategy_ref()
    if strategy is not None:
        strategy.teardown()
