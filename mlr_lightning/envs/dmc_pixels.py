"""dm_control pixel wrapper with the action repeat inside the environment."""

from __future__ import annotations

import collections

import mujoco
import numpy as np

from mlr_lightning.envs.rendering import select_gl_backend

select_gl_backend()  # MUJOCO_GL must be set before dm_control is first imported

from dm_control.mujoco.engine import Camera  # noqa: E402
from dm_control.suite.wrappers import pixels  # noqa: E402


class ActionRepeatPixels(pixels.Wrapper):
    """Repeats each action ``action_repeat`` physics steps, summing rewards, and renders once.

    TorchRL's ``frame_skip`` would render after every inner step; rendering only the last one is
    what the official code (dmc2gym ``frame_skip``) does and is ``action_repeat`` times cheaper.
    """

    def __init__(self, env, action_repeat: int, height: int, width: int, camera_id: int, fast_render: bool):
        self._action_repeat = action_repeat
        self._camera = None
        if fast_render:
            # No anti-aliasing, no cast shadows and a persistent camera: the image differs from the
            # default render only by the shadow (mean abs difference ~1/255), and is much cheaper on CPU
            # (docs/benchmarks.md, "Environment throughput").
            env.physics.model.vis.quality.offsamples = 0
            env.physics.model.light_castshadow[:] = 0
            self._camera = Camera(env.physics, height=height, width=width, camera_id=camera_id)
        super().__init__(env, pixels_only=True, render_kwargs=dict(height=height, width=width, camera_id=camera_id))

    # Model fields that suite tasks randomise per episode (reacher's target geom, finger's target
    # site); the rest of the state lives in MjData.
    _EPISODE_MODEL_FIELDS = ("geom_pos", "geom_quat", "geom_size", "geom_rgba", "site_pos", "site_quat", "site_size",
                             "site_rgba", "body_pos", "body_quat")
    # Everything mj_step reads, warm-start included, so a restored episode continues bit for bit.
    _STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION

    def get_state(self) -> dict:
        """The running episode, for full-state checkpoints: physics, task RNG and step counters."""
        env, physics = self._env, self._env.physics
        integration = np.empty(mujoco.mj_stateSize(physics.model.ptr, self._STATE_SPEC))
        mujoco.mj_getState(physics.model.ptr, physics.data.ptr, integration, self._STATE_SPEC)
        return {
            "integration": integration,
            "model": {name: getattr(physics.model, name).copy() for name in self._EPISODE_MODEL_FIELDS},
            "task_random": env.task.random.get_state(),
            "step_count": env._step_count,  # dm_control keeps the time limit's counter private
            "reset_next_step": env._reset_next_step,
        }

    def set_state(self, state: dict) -> None:
        env, physics = self._env, self._env.physics
        for name, value in state["model"].items():
            getattr(physics.model, name)[:] = value
        mujoco.mj_setState(physics.model.ptr, physics.data.ptr, state["integration"], self._STATE_SPEC)
        mujoco.mj_forward(physics.model.ptr, physics.data.ptr)  # derived quantities (positions for rendering)
        env.task.random.set_state(state["task_random"])
        env._step_count, env._reset_next_step = state["step_count"], state["reset_next_step"]

    def step(self, action):
        reward = 0.0
        for _ in range(self._action_repeat):
            time_step = self._env.step(action)
            reward += time_step.reward or 0.0
            if time_step.last():
                break
        return self._add_pixel_observation(time_step._replace(reward=reward))

    def _add_pixel_observation(self, time_step):
        if self._camera is None:
            frame = self._env.physics.render(**self._render_kwargs)
        else:
            frame = self._camera.render()
        return time_step._replace(observation=collections.OrderedDict(pixels=frame))
