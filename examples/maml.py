"""Meta-learning with MAML on synthetic sine-wave regression tasks, with fabric.

Every task is a sine wave y = A sin(x + phase) with its own amplitude and phase, seen through only 10 points.
MAML learns an initialisation of a small MLP from which one gradient step on a task's 10 points already fits that
task. Each process draws its own tasks; the meta-gradients are averaged across processes with
``fabric.all_reduce`` (the model is not wrapped in DDP: the adaptation steps call it functionally).

Run on one process:                 python examples/maml.py
Run on 2 CPU processes:             fabric run --accelerator cpu --devices 2 examples/maml.py
Short run (for CI):                 add --fast

The meta-loss goes to a CSV file and TensorBoard under ``--log-dir``, with a PNG of its curve at the end
(``pip install -r examples/requirements.txt``).
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from _pictures import finish, make_loggers
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.functional import mse_loss

from fabric_core import Fabric

Params = dict[str, torch.Tensor]


def sample_tasks(count: int, points: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """``count`` sine tasks: support inputs/targets and query inputs/targets, shapes (count, points, 1)."""
    amplitude = torch.empty(count, 1, 1).uniform_(0.1, 5.0, generator=generator)
    phase = torch.empty(count, 1, 1).uniform_(0.0, math.pi, generator=generator)
    x_support = torch.empty(count, points, 1).uniform_(-5.0, 5.0, generator=generator)
    x_query = torch.empty(count, points, 1).uniform_(-5.0, 5.0, generator=generator)
    return x_support, amplitude * torch.sin(x_support + phase), x_query, amplitude * torch.sin(x_query + phase)


def sine_model() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))


def adapt(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> Params:
    """``steps`` plain gradient steps on one task's support points, starting from ``params``.

    ``torch.func.grad`` keeps the steps differentiable, so the meta-gradient flows through them (second order).
    """

    def support_loss(p: Params) -> torch.Tensor:
        return mse_loss(functional_call(model, p, (x,)), y)

    for _ in range(steps):
        grads = grad(support_loss)(params)
        params = {name: p - lr * grads[name] for name, p in params.items()}
    return params


def query_losses(model: nn.Module, tasks: tuple[torch.Tensor, ...], steps: int, lr: float) -> torch.Tensor:
    """Each task's query loss after ``steps`` adaptation steps, computed for all tasks at once with ``vmap``."""
    params: Params = dict(model.named_parameters())

    def one_task(x_s: torch.Tensor, y_s: torch.Tensor, x_q: torch.Tensor, y_q: torch.Tensor) -> torch.Tensor:
        adapted = adapt(model, params, x_s, y_s, steps, lr)
        return mse_loss(functional_call(model, adapted, (x_q,)), y_q)

    return vmap(one_task)(*tasks)


def evaluate(fabric: Fabric, model: nn.Module, tasks: tuple[torch.Tensor, ...], lr: float) -> list[float]:
    """Mean query MSE over the test tasks after 0, 1 and 10 adaptation steps (tasks shared out over processes)."""
    mine = tuple(t[fabric.global_rank :: fabric.world_size].to(fabric.device) for t in tasks)
    totals = torch.stack([query_losses(model, mine, steps, lr).detach().sum() for steps in (0, 1, 10)])
    totals = fabric.all_reduce(totals, reduce_op="sum")
    return (totals / tasks[0].size(0)).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a short run (a few seconds of training)")
    parser.add_argument("--iterations", type=int, default=None, help="meta-updates")
    parser.add_argument("--meta-batch-size", type=int, default=16, help="tasks per meta-update, over all processes")
    parser.add_argument("--shots", type=int, default=10, help="support (and query) points per task")
    parser.add_argument("--inner-lr", type=float, default=0.01)
    parser.add_argument("--meta-lr", type=float, default=1e-3)
    parser.add_argument("--log-dir", default="fabric_logs", help="metrics (CSV, TensorBoard) and pictures go here")
    args = parser.parse_args()
    iterations = args.iterations or (400 if args.fast else 5000)

    csv_logger, tensorboard = make_loggers(args.log_dir, "maml")
    fabric = Fabric(loggers=[csv_logger, tensorboard])
    fabric.launch()
    fabric.seed_everything(42)  # the same initial weights on every process
    if args.meta_batch_size % fabric.world_size:
        raise ValueError(f"--meta-batch-size {args.meta_batch_size} must be divisible by {fabric.world_size} processes")
    tasks_per_process = args.meta_batch_size // fabric.world_size
    task_generator = torch.Generator().manual_seed(1000 + fabric.global_rank)  # each process its own tasks
    test_tasks = sample_tasks(100, args.shots, torch.Generator().manual_seed(7))

    model = fabric.to_device(sine_model())
    optimizer = fabric.setup_optimizers(torch.optim.Adam(model.parameters(), lr=args.meta_lr))
    before = evaluate(fabric, model, test_tasks, args.inner_lr)
    fabric.print(
        f"MAML on {fabric.world_size} process(es), {tasks_per_process} tasks each per meta-update;"
        f" before training the query MSE is {before[0]:.3f} (after 1 adaptation step {before[1]:.3f})"
    )
    start = time.perf_counter()
    for iteration in fabric.progress(range(1, iterations + 1), desc="meta-updates"):
        tasks = tuple(t.to(fabric.device) for t in sample_tasks(tasks_per_process, args.shots, task_generator))
        with fabric.autocast():
            meta_loss = query_losses(model, tasks, steps=1, lr=args.inner_lr).mean()
        optimizer.zero_grad()
        fabric.backward(meta_loss)
        # average the meta-gradients of all processes: one all_reduce over the flattened gradients
        grads = [p.grad for p in model.parameters()]
        flat = fabric.all_reduce(torch.cat([g.flatten() for g in grads]), reduce_op="mean")
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        optimizer.step()
        if iteration % 10 == 0:
            fabric.log("meta_loss", meta_loss.detach(), step=iteration)  # this process's tasks
        if iteration % max(1, iterations // 5) == 0:
            loss = fabric.all_reduce(meta_loss.detach(), reduce_op="mean").item()
            fabric.print(
                f"iteration {iteration}/{iterations}: meta-loss {loss:.3f} ({time.perf_counter() - start:.1f}s)"
            )

    after = evaluate(fabric, model, test_tasks, args.inner_lr)
    fabric.print(f"after training: query MSE {after[0]:.3f} before adaptation, {after[1]:.3f} after 1 step")
    fabric.log_dict({"query_mse_0_steps": after[0], "query_mse_1_step": after[1]}, step=iterations)
    finish(fabric, csv_logger, [["meta_loss"]], "MAML: meta-loss (query MSE after one adaptation step)")
    if fabric.is_global_zero:
        print(f"final: query MSE after 10 adaptation steps {after[2]:.3f} (was {before[2]:.3f} before meta-training)")


if __name__ == "__main__":
    main()
