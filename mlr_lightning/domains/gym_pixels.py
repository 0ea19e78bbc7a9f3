"""Gymnasium control from pixels: SAC + MLR (as on DMC) on gymnasium's ``Pendulum-v1``, seen as rendered frames.

The third domain, added as docs/design.md ("Adding a domain") describes: this file and its line in
``DOMAINS``. The agent, replay, MLR and training loop are DMC's; what differs is the environment, the
task check, the bounds of the environment keys and the normalised score.

Frames are drawn here from the pendulum's angle (a red rod on a white background, with a black
axle) rather than by gymnasium's renderer, which for classic-control tasks needs pygame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium
import numpy as np
import torch
from omegaconf import DictConfig
from torchrl.data import Bounded

from mlr_lightning.config import ConfigError
from mlr_lightning.domains.dmc import BOUNDS as DMC_BOUNDS
from mlr_lightning.domains.dmc import DMCDomain, ExperimentConfig, validate_dmc
from mlr_lightning.envs.stacked import FrameStackEnv

TASKS = ("Pendulum-v1",)  # the tasks this module can draw
# Pendulum-v1's reward is -(angle^2 + 0.1 velocity^2 + 0.001 torque^2) per step, over 200 steps:
# at worst -(pi^2 + 0.1 * 8^2 + 0.001 * 2^2) per step, at best 0.
WORST_RETURN = -(np.pi**2 + 0.1 * 8**2 + 0.001 * 2**2) * 200


@dataclass
class GymPixelsEnvConfig:
    task: str = "Pendulum-v1"
    action_repeat: int = 2  # simulator steps per agent step, rewards summed; the frame is drawn after the last
    image_size: int = 100  # drawn frame, before the crop
    crop_size: int = 84  # random crop for training, centre crop for acting and evaluation
    frame_stack: int = 3


@dataclass
class GymPixelsConfig(ExperimentConfig):
    """DMC's schema (encoder, sac, mlr, replay, train, eval sections) with this domain's env section."""

    domain: str = "gym_pixels"
    env: GymPixelsEnvConfig = field(default_factory=GymPixelsEnvConfig)


class PendulumFrames:
    """Gymnasium's pendulum with an action repeat and a drawn ``[S, S, 3]`` frame of the rod's angle."""

    def __init__(self, task: str, action_repeat: int, image_size: int):
        self.env = gymnasium.make(task)
        self.action_repeat = action_repeat
        # Pixel centres in [-1, 1] (y up); the rod turns about the centre, angle 0 pointing up.
        axis = (np.arange(image_size) + 0.5) / image_size * 2 - 1
        self.x, self.y = np.meshgrid(axis, -axis)
        self.seed_next_reset: int | None = None

    def reset(self) -> np.ndarray:
        self.env.reset(seed=self.seed_next_reset)
        self.seed_next_reset = None
        return self.frame()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        reward, terminated, truncated = 0.0, False, False
        for _ in range(self.action_repeat):
            _, r, terminated, truncated, _ = self.env.step(action)
            reward += float(r)
            if terminated or truncated:
                break
        return self.frame(), reward, terminated, truncated

    def frame(self) -> np.ndarray:
        theta = self.env.unwrapped.state[0]
        tip_x, tip_y = 0.8 * np.sin(theta), 0.8 * np.cos(theta)
        along = np.clip((self.x * tip_x + self.y * tip_y) / 0.64, 0, 1)  # projection onto the rod, in [0, 1]
        on_rod = np.hypot(self.x - along * tip_x, self.y - along * tip_y) <= 0.12
        image = np.full((*self.x.shape, 3), 255, dtype=np.uint8)
        image[on_rod] = (204, 77, 77)
        image[np.hypot(self.x, self.y) <= 0.08] = 0
        return image

    def get_state(self) -> dict:
        """The running episode: the pendulum's angle and velocity, its RNG and the time limit's counter."""
        env = self.env.unwrapped
        state = getattr(env, "state", None)  # None before the first reset
        return {"state": None if state is None else state.copy(), "last_u": getattr(env, "last_u", None),
                "rng": env.np_random.bit_generator.state, "elapsed_steps": self.env._elapsed_steps,
                "seed_next_reset": self.seed_next_reset}

    def set_state(self, state: dict) -> None:
        env = self.env.unwrapped
        env.state = None if state["state"] is None else state["state"].copy()
        env.last_u = state["last_u"]
        env.np_random.bit_generator.state = state["rng"]
        self.env._elapsed_steps, self.seed_next_reset = state["elapsed_steps"], state["seed_next_reset"]


class GymPixelEnv(FrameStackEnv):
    """:class:`PendulumFrames` as a TorchRL environment: ``pixels`` ``[3 * frame_stack, S, S]`` uint8."""

    def __init__(self, game: PendulumFrames, image_size: int, frame_stack: int):
        super().__init__(game, (3, image_size, image_size), frame_stack)
        space = game.env.action_space
        self.action_spec = Bounded(torch.as_tensor(space.low), torch.as_tensor(space.high), space.shape,
                                   dtype=torch.float32)

    def _game_reset(self) -> np.ndarray:
        return self.game.reset().transpose(2, 0, 1).copy()

    def _game_step(self, action: torch.Tensor) -> tuple[np.ndarray, float, bool, bool]:
        frame, reward, terminated, truncated = self.game.step(action.numpy())
        return frame.transpose(2, 0, 1).copy(), reward, terminated, truncated

    def _set_seed(self, seed: int | None) -> None:
        self.game.seed_next_reset = seed


class GymPixelsDomain(DMCDomain):
    """DMC's agent, replay and x-axis (environment steps = agent steps x action repeat) on a gymnasium task."""

    name = "gym_pixels"
    schema = GymPixelsConfig
    bounds = {key: bound for key, bound in DMC_BOUNDS.items() if key != "env.camera_id"}

    def validate(self, cfg: DictConfig) -> None:
        validate_dmc(cfg)

    def check_task(self, cfg: DictConfig) -> None:
        if cfg.env.task not in TASKS:
            raise ConfigError(f"env.task={cfg.env.task!r} is not a task this domain can draw; available: "
                              f"{', '.join(TASKS)}")

    def make_env(self, cfg: DictConfig, seed: int, train: bool = True) -> GymPixelEnv:
        e = cfg.env  # training and evaluation environments are the same
        env = GymPixelEnv(PendulumFrames(e.task, e.action_repeat, e.image_size), e.image_size, e.frame_stack)
        env.set_seed(seed)
        return env

    def normalized_score(self, task: str, score: float) -> float:
        return 1 - score / WORST_RETURN  # 0: the worst return possible, 1: the best

    def paper_reference(self, task: str, algorithm: str, budget: int) -> str:
        return ""  # the paper has no gymnasium results


GYM_PIXELS = GymPixelsDomain()
