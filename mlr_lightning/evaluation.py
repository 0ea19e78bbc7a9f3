"""Deterministic evaluation episodes."""

from __future__ import annotations

import torch
from tensordict.nn import TensorDictModule
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type


@torch.no_grad()
def evaluate(env: EnvBase, policy: TensorDictModule, num_episodes: int) -> list[float]:
    """Returns of ``num_episodes`` episodes with the mean action (exploration off)."""
    returns = []
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        for _ in range(num_episodes):
            rollout = env.rollout(max_steps=10**7, policy=policy, break_when_any_done=True)
            returns.append(float(rollout["next", "reward"].sum()))
    return returns
