"""The Atari training stream: :class:`ExperienceStream` with several prioritized updates per step.

Each collected agent step is followed by ``updates_per_step`` items, each one prioritized batch
(:meth:`PrioritizedFrameReplay.sample`). The importance-sampling exponent beta is a pure function
of the checkpointed agent-step counter: linear from ``beta_start`` at step 0 to ``beta_end`` at the
last step (rlpyt anneals over the training steps). Priorities flow back through
:class:`PriorityUpdate`, a callback that reads what ``training_step`` returns.
"""

from __future__ import annotations

import lightning.pytorch as pl
from torchrl import timeit

from mlr_lightning.data.prioritized import PrioritizedFrameReplay
from mlr_lightning.data.stream import CollectorFactory, ExperienceStream


class PrioritizedExperienceStream(ExperienceStream):
    def __init__(self, make_collector: CollectorFactory, replay: PrioritizedFrameReplay, total_agent_steps: int,
                 init_steps: int, batch_size: int, updates_per_step: int, beta_start: float, beta_end: float,
                 windows: bool, max_env_restarts: int):
        # action_repeat=1: on Atari the x-axis is agent steps (each is frame_skip emulator frames).
        super().__init__(make_collector, replay, total_agent_steps=total_agent_steps, init_steps=init_steps,
                         action_repeat=1, batch_size=batch_size, window_batch_size=None,
                         max_env_restarts=max_env_restarts)
        self.updates_per_step, self.windows = updates_per_step, windows
        self.beta_start, self.beta_end = beta_start, beta_end

    def __len__(self) -> int:
        return (self.total_agent_steps - self.init_steps) * self.updates_per_step

    def beta(self) -> float:
        progress = min(1.0, self.counters.agent_steps / self.total_agent_steps)
        return self.beta_start + (self.beta_end - self.beta_start) * progress

    def __iter__(self):
        self._start()
        # A snapshot taken between the updates of one agent step: the resumed stream owes the rest.
        for _ in range(self.counters.owed_updates):
            self.counters.owed_updates -= 1
            yield self.sample()
        while (steps := self._collect()) is not None:
            self._record(steps)
            if self.init_steps <= self.counters.agent_steps < self.total_agent_steps:
                for update in range(self.updates_per_step):
                    self.counters.owed_updates = self.updates_per_step - 1 - update
                    batch = self.sample()
                    if self.counters.agent_steps == self.total_agent_steps - 1 and update == self.updates_per_step - 1:
                        # Lightning stops after len(self) batches: collect the final step now (no update follows it).
                        self._record(self._collect())
                    yield batch

    def sample(self) -> dict:
        beta = self.beta()
        with timeit("data/sample_prioritized"):
            sample = self.replay.sample(self.batch_size, beta, self.windows)
        return {"sample": sample, "env_steps": self.env_steps, "beta": beta,
                "episode_return": self.counters.last_episode_return}


class PriorityUpdate(pl.Callback):
    """Writes the priorities returned by ``training_step`` (``index``, ``priority``) into this
    rank's replay. Place it before the checkpoint callback, so that a snapshot holds them."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        trainer.datamodule.stream.replay.update_priority(outputs["index"], outputs["priority"])
