"""A TorchRL environment that stacks its own frames: the acting side of both domains.

Each agent step gives the stack of the last ``frame_stack`` uint8 frames ``"pixels"``
``[frame_stack * C, H, W]`` (at an episode start the first frame fills every slot, as
``CatFrames(padding="same")``), the step count within the episode ``"step_count"`` ``[1]`` (as
``StepCounter``, which also truncates at ``max_steps``) and the undiscounted return so far
``"episode_reward"`` ``[1]`` (as ``RewardSum``, before any reward clipping).

Why not TorchRL's library wrappers and transforms, which produce the same tensors
(``tests/test_stacked_env.py`` compares the two step by step on both domains)? Their per-step
machinery costs a large share of a cheap step (docs/benchmarks.md, "Data path"): the wrapper's read
of the observation into a TensorDict and its device cast (on a machine without a GPU driver every
cast probes NVML), and one pass of key bookkeeping per transform. Here a step is one ``torch.cat``
of the frame and a handful of scalar tensors.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs import EnvBase


class FrameStackEnv(EnvBase):
    """Subclasses wrap one library environment ``game`` through :meth:`_game_reset` and
    :meth:`_game_step`; ``game.get_state``/``set_state`` save and restore its running episode.

    Like TorchRL's ``StepCounter`` and ``RewardSum``, a step reads the stack, the step count and the
    return from its input (the observation being acted on), so the environment holds no state of
    its own beyond the simulator: a snapshot of the collector's observation and of the simulator
    restores an episode exactly.
    """

    def __init__(self, game, frame_shape: tuple[int, int, int], frame_stack: int, max_steps: int | None = None,
                 clip_rewards: bool = False):
        super().__init__(device="cpu")
        self.game = game
        channels, height, width = frame_shape
        self.frame_stack, self.channels, self.max_steps, self.clip_rewards = frame_stack, channels, max_steps, clip_rewards
        self.observation_spec = Composite(
            pixels=Unbounded((frame_stack * channels, height, width), dtype=torch.uint8),
            step_count=Bounded(0, torch.iinfo(torch.int64).max, (1,), dtype=torch.int64),
            episode_reward=Unbounded((1,)),
        )
        self.reward_spec = Unbounded((1,))

    @abstractmethod
    def _game_reset(self) -> np.ndarray:
        """Start (or continue, see Atari's lives) an episode; its first frame ``[C, H, W]`` uint8."""

    @abstractmethod
    def _game_step(self, action: torch.Tensor) -> tuple[np.ndarray, float, bool, bool]:
        """One agent step: the frame ``[C, H, W]``, the raw reward, terminated, truncated."""

    def _reset(self, tensordict: TensorDictBase | None = None) -> TensorDict:
        frame = torch.from_numpy(self._game_reset())
        false = torch.zeros(1, dtype=torch.bool)
        return TensorDict({"pixels": frame.repeat(self.frame_stack, 1, 1),  # [S*C, H, W]
                           "step_count": torch.zeros(1, dtype=torch.int64),
                           "episode_reward": torch.zeros(1), "done": false, "terminated": false.clone(),
                           "truncated": false.clone()}, batch_size=[])

    def _step(self, tensordict: TensorDictBase) -> TensorDict:
        frame, reward, terminated, truncated = self._game_step(tensordict["action"])
        stack = torch.cat([tensordict["pixels"][self.channels:], torch.from_numpy(frame)])  # a new tensor: no aliasing
        steps = tensordict["step_count"] + 1
        reward = torch.tensor([reward], dtype=torch.float32)
        episode_return = tensordict["episode_reward"] + reward  # float32, as RewardSum adds
        truncated = truncated or (self.max_steps is not None and int(steps) >= self.max_steps)
        if self.clip_rewards:
            reward = reward.sign()
        return TensorDict({
            "pixels": stack,
            "reward": reward,
            "step_count": steps,
            "episode_reward": episode_return,
            "done": torch.tensor([terminated or truncated]),
            "terminated": torch.tensor([terminated]),
            "truncated": torch.tensor([truncated]),
        }, batch_size=[])

    def get_state(self) -> dict:
        """The running episode inside the simulator (the rest is in the observation being acted on)."""
        return self.game.get_state()

    def set_state(self, state: dict) -> None:
        self.game.set_state(state)

    def rand_action(self, tensordict: TensorDictBase | None = None) -> TensorDictBase:
        """A uniform random action (the action spec's draw), without the generic batch-size handling."""
        tensordict = TensorDict() if tensordict is None else tensordict
        tensordict.set("action", self.action_spec.rand())
        return tensordict

    def step_and_maybe_reset(self, tensordict: TensorDictBase) -> tuple[TensorDictBase, TensorDictBase]:
        """TorchRL's step, ``step_mdp`` and reset-if-done, for this environment's fixed keys.

        The generic versions find the keys to carry and to reset through the specs at every step
        (a third of a Pong step, docs/benchmarks.md). The result is the same: the input with its ``"next"``,
        and the observation to act on next (a fresh episode's after the last step). Other keys of
        the input, which ``step_mdp`` would carry over, are not (the policy writes only the action).
        """
        step = self._step(tensordict)
        tensordict.set("next", step)
        if step["done"]:
            return tensordict, self._reset()
        return tensordict, step.exclude("reward")
