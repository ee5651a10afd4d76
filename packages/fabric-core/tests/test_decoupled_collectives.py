"""Lightning's decoupled PPO layout on real gloo processes: collectives on the whole world, on a player-trainer
group made with ``create_group``, and Fabric training in a trainers' group made with ``new_group``."""

from __future__ import annotations

from datetime import timedelta

import torch

from fabric_core import Fabric
from fabric_strategies import DDPStrategy, TorchCollective
from fabric_testing import run_processes
from fabric_utils import CollectibleGroup


def _decoupled_ppo(rank: int, world_size: int) -> dict[str, object]:
    """Lightning's decoupled PPO layout: rank 0 plays, the other ranks train in a group of their own."""
    world = TorchCollective().setup(backend="gloo", timeout=timedelta(seconds=30))
    player_trainer = TorchCollective().setup(backend="gloo")  # the default group exists: nothing is created
    player_trainer.create_group(ranks=[0, 1], timeout=timedelta(seconds=30))
    # every rank creates the trainers' group; only the trainers use it
    optimization_group = player_trainer.new_group(ranks=list(range(1, world_size)), timeout=timedelta(seconds=30))
    out: dict[str, object] = {}
    if rank == 0:
        rollouts = [None] + [{"rewards": torch.full((4, 2), float(r))} for r in range(1, world_size)]
        world.scatter_object_list([None], rollouts, src=0)
        out["metrics"] = player_trainer.broadcast_object_list([None], src=1)[0]
        out["weights"] = world.broadcast(torch.zeros(2), src=1).tolist()
    else:
        received: list[object] = [None]
        world.scatter_object_list(received, [None] * world_size, src=0)
        rewards = received[0]["rewards"]  # type: ignore[index]
        out["collectible"] = isinstance(optimization_group, CollectibleGroup)
        # the trainers' model is synchronised in their group only
        fabric = Fabric(accelerator="cpu", devices=world_size, strategy=DDPStrategy(process_group=optimization_group))
        fabric.launch()
        torch.manual_seed(0)
        model = torch.nn.Linear(2, 1, bias=False)
        model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
        fabric.backward(model(rewards).sum())
        optimizer.step()
        out["mean_reward"] = fabric.all_reduce(rewards.mean(), group=optimization_group).item()
        out["gathered"] = fabric.all_gather(rewards[0, :1], group=optimization_group).tolist()
        if rank == 1:
            player_trainer.broadcast_object_list([{"loss": 0.5}], src=1)
        weights = model.weight.detach().flatten()
        out["weights"] = world.broadcast(weights if rank == 1 else torch.zeros(2), src=1).tolist()
        out["own_weights"] = weights.tolist()
    world.barrier()
    player_trainer.teardown()
    world.teardown()
    return out


def test_decoupled_ppo_pattern_with_a_trainers_subgroup():
    player, first, second = run_processes(_decoupled_ppo, world_size=3, init_process_group=False)
    assert player["metrics"] == {"loss": 0.5}
    assert first["own_weights"] == second["own_weights"]  # gradients were averaged over the trainers' group
    assert player["weights"] == first["weights"] == second["weights"] == first["own_weights"]
    for trainer in (first, second):
        assert trainer["collectible"]
        assert trainer["mean_reward"] == 1.5
        assert trainer["gathered"] == [[1.0], [2.0]]
