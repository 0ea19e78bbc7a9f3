"""Deterministic evaluation episodes."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from torch import Tensor
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

MAX_EPISODE_STEPS = 10**7  # episodes end through the environment's own time limit


@torch.no_grad()
def evaluate(env: EnvBase, policy: TensorDictModule, num_episodes: int) -> list[float]:
    """Returns of ``num_episodes`` episodes with the mean action (exploration off)."""
    return [record_episode(env, policy)[0] for _ in range(num_episodes)]


@torch.no_grad()
def deterministic_episode(env: EnvBase, policy: TensorDictModule) -> TensorDictBase:
    """One episode with the mean action (exploration off), as a TorchRL rollout ``[T]``."""
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        return env.rollout(max_steps=MAX_EPISODE_STEPS, policy=policy, break_when_any_done=True)


def record_episode(env: EnvBase, policy: TensorDictModule) -> tuple[float, Tensor]:
    """One deterministic episode: its return and its frames ``[T + 1, H, W, 3]`` uint8 (newest of each stack)."""
    rollout = deterministic_episode(env, policy)
    pixels = torch.cat([rollout["pixels"], rollout["next", "pixels"][-1:]])  # [T + 1, 3S, H, W]
    # RGB stacks (3 channels per frame): the newest frame; grayscale stacks (Atari): the newest, as grey.
    newest = pixels[:, -3:] if pixels.shape[1] % 3 == 0 else pixels[:, -1:].expand(-1, 3, -1, -1)
    frames = newest.permute(0, 2, 3, 1).contiguous()
    return float(rollout["next", "reward"].sum()), frames
