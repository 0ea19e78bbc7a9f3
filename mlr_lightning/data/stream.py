"""The training data stream: collector -> replay -> sampled batches, as Lightning's dataloader.

Each item of :class:`ExperienceStream` is produced by stepping the TorchRL collector once (one
agent step, ``action_repeat`` environment steps), writing the step into the replay, and, once the
random seed steps are done, sampling one update's worth of data. Lightning's fit loop therefore
drives interaction and learning at the paper's ratio of one update per agent step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from torch.utils.data import IterableDataset
from torchrl import timeit
from torchrl.collectors import Collector

from mlr_lightning.data.replay import FrameReplay


@dataclass
class StreamCounters:
    """Progress of the interaction (saved in checkpoints through the data module's state_dict)."""

    agent_steps: int = 0
    episodes: int = 0
    last_episode_return: float = math.nan


class ExperienceStream(IterableDataset):
    def __init__(
        self,
        collector: Collector,
        replay: FrameReplay,
        total_agent_steps: int,
        init_steps: int,
        action_repeat: int,
        batch_size: int,
        window_batch_size: int | None,
    ):
        super().__init__()
        self.collector, self.replay = collector, replay
        self.total_agent_steps, self.init_steps, self.action_repeat = total_agent_steps, init_steps, action_repeat
        self.batch_size, self.window_batch_size = batch_size, window_batch_size
        self.counters = StreamCounters()

    @property
    def env_steps(self) -> int:
        return self.counters.agent_steps * self.action_repeat

    def __len__(self) -> int:
        """Number of updates: one per agent step from ``init_steps`` on (as the official loop)."""
        return self.total_agent_steps - self.init_steps

    def __iter__(self):
        collecting = iter(self.collector)
        while (steps := self._collect(collecting)) is not None:
            self._record(steps)
            if self.init_steps <= self.counters.agent_steps < self.total_agent_steps:
                batch = self.sample()
                if self.counters.agent_steps == self.total_agent_steps - 1:
                    # Lightning stops after len(self) batches, so the final agent step, which no
                    # update follows (as in the official loop), is collected here.
                    self._record(self._collect(collecting))
                yield batch

    def _collect(self, collecting) -> TensorDictBase | None:
        with timeit("data/collect"):
            return next(collecting, None)

    def sample(self) -> dict:
        with timeit("data/sample_transitions"):
            batch = {"transitions": self.replay.sample_transitions(self.batch_size), "env_steps": self.env_steps}
        if self.window_batch_size:
            with timeit("data/sample_windows"):
                batch["windows"] = self.replay.sample_windows(self.window_batch_size)
        batch["episode_return"] = self.counters.last_episode_return
        return batch

    def _record(self, steps: TensorDictBase) -> None:
        self.replay.extend(steps)
        steps = steps.reshape(-1)
        self.counters.agent_steps += steps.numel()
        done = steps["next", "done"].reshape(-1)
        if done.any():
            returns = steps["next", "episode_reward"].reshape(-1)[done].tolist()
            self.counters.episodes += len(returns)
            self.counters.last_episode_return = returns[-1]


def make_collector(env, policy, total_agent_steps: int, init_steps: int, policy_device: torch.device) -> Collector:
    """One environment stepped one agent step per iteration; uniform random actions for ``init_steps``."""
    return Collector(
        env,
        policy,
        frames_per_batch=1,
        total_frames=total_agent_steps,
        init_random_frames=init_steps,
        policy_device=policy_device,
        env_device="cpu",
        storing_device="cpu",
        auto_register_policy_transforms=False,  # the policy needs no extra env transform
    )
