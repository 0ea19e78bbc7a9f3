"""DeepMind Control suite from pixels, on the MLR/CURL protocol.

``make_dmc_env`` returns a TorchRL env whose ``"pixels"`` entry is the stack of the last
``frame_stack`` uint8 RGB frames, ``[3 * frame_stack, image_size, image_size]``, rendered from
camera 0 after the last of ``action_repeat`` physics steps; ``"action"`` is float32 in the task's
bounds. Episodes end only by the time limit, marked ``truncated`` (not ``terminated``), as
TorchRL's ``DMControlWrapper`` does, so the agent bootstraps through it.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from torchrl.data import Bounded

from mlr_lightning.envs.rendering import select_gl_backend
from mlr_lightning.envs.stacked import FrameStackEnv


class UnknownTaskError(ValueError):
    pass


@cache
def available_tasks() -> tuple[str, ...]:
    """Every dm_control suite task as ``<domain>_<task>``."""
    select_gl_backend()
    from dm_control import suite

    return tuple(f"{domain}_{task}" for domain, task in suite.ALL_TASKS)


def split_task(name: str) -> tuple[str, str]:
    """``ball_in_cup_catch`` -> ``("ball_in_cup", "catch")``; unknown names list the known ones."""
    tasks = available_tasks()  # selects the GL backend before dm_control is imported
    from dm_control import suite

    if name not in tasks:
        raise UnknownTaskError(f"env.task={name!r} is not a dm_control suite task; available: {', '.join(tasks)}")
    return next((d, t) for d, t in suite.ALL_TASKS if f"{d}_{t}" == name)


class DMCPixelEnv(FrameStackEnv):
    """One dm_control task from pixels (:class:`~mlr_lightning.envs.dmc_pixels.ActionRepeatPixels`)."""

    def __init__(self, pixel_env, image_size: int, frame_stack: int):
        super().__init__(pixel_env, (3, image_size, image_size), frame_stack)
        spec = pixel_env.action_spec()
        self.action_spec = Bounded(torch.tensor(spec.minimum, dtype=torch.float32),
                                   torch.tensor(spec.maximum, dtype=torch.float32), spec.shape, dtype=torch.float32)

    def _game_reset(self) -> np.ndarray:
        return chw(self.game.reset().observation["pixels"])

    def _game_step(self, action: torch.Tensor) -> tuple[np.ndarray, float, bool, bool]:
        time_step = self.game.step(action.double().numpy())
        ended = time_step.last()
        truncated = ended and bool(np.isclose(time_step.discount, 1))  # the time limit (DMControlWrapper's rule)
        return chw(time_step.observation["pixels"]), time_step.reward, ended and not truncated, truncated

    def _set_seed(self, seed: int | None) -> None:
        if seed is None:
            return
        self.game._env.task._random = np.random.RandomState(seed)  # as TorchRL's DMControlWrapper seeds a task
        self.game.reset()


def chw(frame: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` -> ``[3, H, W]``; MuJoCo's frames come flipped (negative strides), which torch cannot view."""
    return np.ascontiguousarray(frame.transpose(2, 0, 1))


def make_dmc_env(
    task: str,
    action_repeat: int,
    image_size: int,
    camera_id: int,
    frame_stack: int,
    fast_render: bool,
    seed: int,
) -> DMCPixelEnv:
    domain, task_name = split_task(task)
    from dm_control import suite

    from mlr_lightning.envs.dmc_pixels import ActionRepeatPixels

    raw = suite.load(domain, task_name, task_kwargs={"random": seed})
    env = DMCPixelEnv(ActionRepeatPixels(raw, action_repeat, image_size, image_size, camera_id, fast_render),
                      image_size, frame_stack)
    env.set_seed(seed)
    return env
