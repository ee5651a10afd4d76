"""Reinforcement learning with PPO on a cart-pole simulation written here, with fabric.

``CartPole`` below is a batch of classic cart-pole systems (a pole hinged on a cart that the agent pushes left or
right; the episode ends when the pole tips past 12 degrees, the cart leaves the track, or after ``max_steps``),
simulated with torch tensors: no gym, nothing downloaded. Each process runs its own environments and collects its
own experience; the policy and value network is trained with PPO's clipped objective, and DDP averages the
gradients of all processes, so more processes means more experience per update.

Run on one process:                 python examples/ppo.py
Run on 2 CPU processes with DDP:    fabric run --accelerator cpu --devices 2 examples/ppo.py
Short run (for CI):                 add --fast

The loss and the mean episode length go to a CSV file and TensorBoard under ``--log-dir``, with a PNG of their
curves at the end (``pip install -r examples/requirements.txt``).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import torch
from _pictures import finish, make_loggers
from torch import nn
from torch.distributions import Categorical

from fabric_core import Fabric


class CartPole:
    """``count`` cart-pole systems stepped together (Euler integration, 50 steps per simulated second)."""

    gravity, cart_mass, pole_mass, half_length, force, dt = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    max_angle, max_position = 12 * math.pi / 180, 2.4

    def __init__(self, count: int, max_steps: int, generator: torch.Generator, device: torch.device) -> None:
        self.count, self.max_steps, self.generator, self.device = count, max_steps, generator, device
        self.state = torch.zeros(count, 4, device=device)
        self.steps = torch.zeros(count, dtype=torch.long, device=device)
        self.reset(torch.ones(count, dtype=torch.bool, device=device))

    def reset(self, which: torch.Tensor) -> None:
        fresh = (torch.rand(self.count, 4, generator=self.generator) * 0.1 - 0.05).to(self.device)
        self.state = torch.where(which.unsqueeze(1), fresh, self.state)
        self.steps = torch.where(which, torch.zeros_like(self.steps), self.steps)

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Push each cart (action 1: right, 0: left); return observations, rewards and which episodes ended.
        Ended episodes restart at once: the returned observation is then the first of the next episode."""
        x, x_dot, theta, theta_dot = self.state.unbind(1)
        push = (action.float() * 2 - 1) * self.force
        total_mass = self.cart_mass + self.pole_mass
        cos, sin = torch.cos(theta), torch.sin(theta)
        temp = (push + self.pole_mass * self.half_length * theta_dot**2 * sin) / total_mass
        theta_acc = (self.gravity * sin - cos * temp) / (
            self.half_length * (4.0 / 3.0 - self.pole_mass * cos**2 / total_mass)
        )
        x_acc = temp - self.pole_mass * self.half_length * theta_acc * cos / total_mass
        self.state = torch.stack(
            [
                x + self.dt * x_dot,
                x_dot + self.dt * x_acc,
                theta + self.dt * theta_dot,
                theta_dot + self.dt * theta_acc,
            ],
            dim=1,
        )
        self.steps += 1
        fallen = (self.state[:, 0].abs() > self.max_position) | (self.state[:, 2].abs() > self.max_angle)
        done = fallen | (self.steps >= self.max_steps)
        reward = torch.ones(self.count, device=self.device)
        self.reset(done)
        return self.state.clone(), reward, done


class ActorCritic(nn.Module):
    """Separate policy and value networks (sharing a trunk lets the large value errors drown the policy's signal)."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.policy = nn.Sequential(
            nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 2)
        )
        self.value = nn.Sequential(
            nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1)
        )

    def forward(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.policy(observation), self.value(observation).squeeze(-1)


@dataclass
class Rollout:
    observations: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


def collect(
    model: nn.Module, env: CartPole, observation: torch.Tensor, steps: int, gamma: float, lam: float
) -> tuple[Rollout, torch.Tensor, list[int]]:
    """Play ``steps`` steps in every environment; return the experience with GAE advantages, the next
    observation and the lengths of the episodes that ended."""
    observations, actions, log_probs, rewards, dones, values = [], [], [], [], [], []
    finished: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            logits, value = model(observation)
            distribution = Categorical(logits=logits)
            action = distribution.sample()
            observations.append(observation)
            actions.append(action)
            log_probs.append(distribution.log_prob(action))
            values.append(value)
            episode_steps = env.steps.clone() + 1
            observation, reward, done = env.step(action)
            rewards.append(reward)
            dones.append(done.float())
            finished += episode_steps[done].tolist()
        _, next_value = model(observation)
    advantages = torch.zeros(steps, env.count, device=observation.device)
    running = torch.zeros(env.count, device=observation.device)
    for t in reversed(range(steps)):
        following = next_value if t == steps - 1 else values[t + 1]
        not_done = 1.0 - dones[t]
        delta = rewards[t] + gamma * following * not_done - values[t]
        running = delta + gamma * lam * not_done * running
        advantages[t] = running
    returns = advantages + torch.stack(values)
    rollout = Rollout(
        torch.stack(observations).flatten(0, 1),
        torch.stack(actions).flatten(),
        torch.stack(log_probs).flatten(),
        advantages.flatten(),
        returns.flatten(),
    )
    return rollout, observation, finished


def ppo_update(
    fabric: Fabric, model: nn.Module, optimizer: torch.optim.Optimizer, rollout: Rollout, args: argparse.Namespace
) -> float:
    """A few epochs of clipped-objective minibatch updates; every process takes the same number of steps."""
    size = rollout.actions.numel()
    minibatch = size // args.minibatches
    losses = []
    for _ in range(args.update_epochs):
        order = torch.randperm(size, device=fabric.device)
        for start in range(0, minibatch * args.minibatches, minibatch):
            idx = order[start : start + minibatch]
            logits, value = model(rollout.observations[idx])
            distribution = Categorical(logits=logits)
            ratio = torch.exp(distribution.log_prob(rollout.actions[idx]) - rollout.log_probs[idx])
            advantage = rollout.advantages[idx]
            advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
            clipped = torch.clamp(ratio, 1 - args.clip, 1 + args.clip)
            policy_loss = -torch.min(ratio * advantage, clipped * advantage).mean()
            value_loss = (value - rollout.returns[idx]).square().mean()
            loss = policy_loss + 0.5 * value_loss - 0.01 * distribution.entropy().mean()
            optimizer.zero_grad()
            fabric.backward(loss)
            fabric.clip_gradients(model, optimizer, max_norm=0.5)
            optimizer.step()
            losses.append(loss.detach())
    return torch.stack(losses).mean().item()


def greedy_episode_length(fabric: Fabric, model: nn.Module, episodes: int, max_steps: int) -> float:
    """Mean length of ``episodes`` episodes per process with the most likely action (over all processes)."""
    env = CartPole(episodes, max_steps, torch.Generator().manual_seed(99 + fabric.global_rank), fabric.device)
    lengths = torch.zeros(episodes, device=fabric.device)
    alive = torch.ones(episodes, dtype=torch.bool, device=fabric.device)
    observation = env.state.clone()
    with torch.no_grad():
        for _ in range(max_steps):
            logits, _ = model(observation)
            observation, _, done = env.step(logits.argmax(-1))
            lengths += alive.float()
            alive &= ~done
            if not alive.any():
                break
    return fabric.all_reduce(lengths.mean(), reduce_op="mean").item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a short run (a few seconds of training)")
    parser.add_argument("--iterations", type=int, default=None, help="rollout + update rounds")
    parser.add_argument("--envs", type=int, default=8, help="environments per process")
    parser.add_argument("--steps", type=int, default=128, help="steps per environment per rollout")
    parser.add_argument("--max-steps", type=int, default=500, help="episode length limit")
    parser.add_argument("--update-epochs", type=int, default=10)
    parser.add_argument("--minibatches", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2.5e-3)
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--gae-lambda", type=float, default=0.95)
    parser.add_argument("--clip", type=float, default=0.2)
    parser.add_argument("--log-dir", default="fabric_logs", help="metrics (CSV, TensorBoard) and pictures go here")
    args = parser.parse_args()
    iterations = args.iterations or (20 if args.fast else 100)

    csv_logger, tensorboard = make_loggers(args.log_dir, "ppo")
    fabric = Fabric(loggers=[csv_logger, tensorboard])
    fabric.launch()
    fabric.seed_everything(7)
    model = ActorCritic()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, eps=1e-5)
    model, optimizer = fabric.setup(model, optimizer)
    # the same initial weights everywhere (DDP also broadcasts them); different exploration on every process
    fabric.seed_everything(7 + fabric.global_rank, verbose=False)
    env = CartPole(args.envs, args.max_steps, torch.Generator().manual_seed(fabric.global_rank), fabric.device)
    observation = env.state.clone()
    fabric.print(
        f"PPO on cart-pole with {fabric.world_size} process(es) x {args.envs} environments,"
        f" {args.steps * args.envs * fabric.world_size} steps of experience per update"
    )
    start = time.perf_counter()
    for iteration in fabric.progress(range(1, iterations + 1), desc="PPO iterations"):
        progress = (iteration - 1) / iterations
        for group in optimizer.param_groups:
            group["lr"] = args.lr * (1 - progress)  # linear decay
        rollout, observation, finished = collect(model, env, observation, args.steps, args.gamma, args.gae_lambda)
        loss = ppo_update(fabric, model, optimizer, rollout, args)
        stats = torch.tensor([float(sum(finished)), float(len(finished))], device=fabric.device)
        stats = fabric.all_reduce(stats, reduce_op="sum")
        mean_length = (stats[0] / stats[1]).item() if stats[1] > 0 else float("nan")
        fabric.log_dict({"loss": loss, "episode_length": mean_length}, step=iteration)
        if iteration % max(1, iterations // 10) == 0 or iteration == 1:
            fabric.print(
                f"iteration {iteration}/{iterations}: mean episode length {mean_length:.1f}, loss {loss:.3f}"
                f" ({time.perf_counter() - start:.1f}s)"
            )

    balanced = greedy_episode_length(fabric, model, episodes=16, max_steps=args.max_steps)
    finish(fabric, csv_logger, [["loss"], ["episode_length"]], "PPO on cart-pole")
    if fabric.is_global_zero:
        print(
            f"final: the greedy policy balances the pole for {balanced:.1f} steps on average (limit {args.max_steps})"
        )


if __name__ == "__main__":
    main()
