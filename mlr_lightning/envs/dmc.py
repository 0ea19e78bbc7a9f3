"""DeepMind Control suite from pixels, on the MLR/CURL protocol.

``make_dmc_env`` returns a TorchRL env whose ``"pixels"`` entry is the stack of the last
``frame_stack`` uint8 RGB frames, ``[3 * frame_stack, image_size, image_size]``, rendered from
camera 0 after the last of ``action_repeat`` physics steps. Episodes end only by the time limit,
which TorchRL marks as ``truncated`` (not ``terminated``), so the agent bootstraps through it.
"""

from __future__ import annotations

from functools import cache

from torchrl.envs import CatFrames, DMControlWrapper, DoubleToFloat, PermuteTransform, RewardSum, StepCounter, TransformedEnv

from mlr_lightning.envs.rendering import select_gl_backend


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


def make_dmc_env(
    task: str,
    action_repeat: int,
    image_size: int,
    camera_id: int,
    frame_stack: int,
    fast_render: bool,
    seed: int,
) -> TransformedEnv:
    domain, task_name = split_task(task)
    from dm_control import suite

    from mlr_lightning.envs.dmc_pixels import ActionRepeatPixels

    raw = suite.load(domain, task_name, task_kwargs={"random": seed})
    pixel_env = ActionRepeatPixels(raw, action_repeat, image_size, image_size, camera_id, fast_render)
    env = TransformedEnv(
        DMControlWrapper(pixel_env),
        # [H, W, 3] uint8 -> [3, H, W] uint8: frames stay uint8 until the network.
        PermuteTransform(dims=(-1, -3, -2), in_keys=["pixels"]),
    )
    env.append_transform(CatFrames(N=frame_stack, dim=-3, in_keys=["pixels"]))
    env.append_transform(DoubleToFloat())
    env.append_transform(StepCounter())
    env.append_transform(RewardSum())
    env.set_seed(seed)
    return env
