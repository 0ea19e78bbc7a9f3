"""The lean acting path equals TorchRL's stock components it replaces.

``FrameStackEnv`` stands in for TorchRL's library wrapper + transform chain, and ``RowAppender``
for ``ReplayBuffer.add``; both exist only for speed, so both are checked against the originals,
built here from TorchRL's own classes.
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, SliceSampler, TensorDictReplayBuffer
from torchrl.envs import (
    CatFrames,
    DMControlWrapper,
    DoubleToFloat,
    GymWrapper,
    PermuteTransform,
    RenameTransform,
    RewardSum,
    SignTransform,
    StepCounter,
    TransformedEnv,
    UnsqueezeTransform,
)

from mlr_lightning.data.sum_tree import TreePrioritizedSampler
from mlr_lightning.data.torchrl_internals import RowAppender
from mlr_lightning.envs.atari import make_atari_env, make_gym_atari
from mlr_lightning.envs.dmc import make_dmc_env, split_task


def torchrl_dmc(task, action_repeat, size, frame_stack, seed):
    """The TorchRL composition this project used before ``FrameStackEnv``."""
    from dm_control import suite

    from mlr_lightning.envs.dmc_pixels import ActionRepeatPixels

    domain, name = split_task(task)
    raw = suite.load(domain, name, task_kwargs={"random": seed})
    env = TransformedEnv(DMControlWrapper(ActionRepeatPixels(raw, action_repeat, size, size, 0, True)),
                         PermuteTransform(dims=(-1, -3, -2), in_keys=["pixels"]))
    for transform in (CatFrames(N=frame_stack, dim=-3, in_keys=["pixels"]), DoubleToFloat(), StepCounter(), RewardSum()):
        env.append_transform(transform)
    env.set_seed(seed)
    return env


def torchrl_atari(game, train, seed, max_steps=None):
    env = TransformedEnv(GymWrapper(make_gym_atari(game, 4, 84, 30, 0.0, 108_000, train), categorical_action_encoding=False),
                         RenameTransform(in_keys=["observation"], out_keys=["pixels"]))
    for transform in (UnsqueezeTransform(dim=-3, in_keys=["pixels"]), CatFrames(N=4, dim=-3, in_keys=["pixels"]),
                      StepCounter(max_steps=max_steps), RewardSum()):
        env.append_transform(transform)
    if train:
        env.append_transform(SignTransform(in_keys=["reward"]))
    env.set_seed(seed)
    return env


def assert_same_rollouts(env, reference, steps):
    """Same random actions (torch's generator), through episode ends and resets (no early stop)."""
    torch.manual_seed(0)
    ours = env.rollout(steps, break_when_any_done=False)
    torch.manual_seed(0)
    theirs = reference.rollout(steps, break_when_any_done=False)
    assert set(ours.keys(True, True)) == set(theirs.keys(True, True))
    for key in theirs.keys(True, True):
        assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), f"{key} differs"
    return ours


def test_dmc_env_steps_like_torchrls_wrapper_and_transforms():
    # 125 agent steps per episode at action repeat 8: two episode ends and resets.
    rollout = assert_same_rollouts(make_dmc_env("cartpole_swingup", 8, 32, 0, 3, True, seed=3),
                                   torchrl_dmc("cartpole_swingup", 8, 32, 3, seed=3), 260)
    assert rollout["next", "truncated"].sum() == 2 and not rollout["next", "terminated"].any()
    assert (rollout["pixels"][0, :3] == rollout["pixels"][0, 6:]).all()  # the first frame fills the stack


@pytest.mark.parametrize("train, max_steps", [(True, None), (False, 150)])
def test_atari_env_steps_like_torchrls_wrapper_and_transforms(train, max_steps):
    """Training: life losses end episodes and rewards are clipped; evaluation: raw rewards, a step cap."""
    rollout = assert_same_rollouts(make_atari_env("breakout", 4, 84, 4, 30, 0.0, 108_000, train, seed=5, max_steps=max_steps),
                                   torchrl_atari("breakout", train, seed=5, max_steps=max_steps), 400)
    assert rollout["next", "done"].sum() >= 2


def stock_and_appended(sampler):
    """Two buffers over 7 rows: one written with ``buffer.add``, one with ``RowAppender``."""
    buffers = [TensorDictReplayBuffer(storage=LazyTensorStorage(7), sampler=sampler()) for _ in range(2)]
    return buffers[0], buffers[1], RowAppender(buffers[1])


def row(t, trajectory=None):
    return {"value": torch.tensor([float(t)]), "trajectory": torch.tensor(t // 4 if trajectory is None else trajectory)}


def test_appended_rows_leave_a_prioritized_buffer_as_buffer_add_does():
    stock, appended, append = stock_and_appended(lambda: TreePrioritizedSampler(7, alpha=0.5, beta=0.4))  # the replay's
    for t in range(17):  # wraps around twice
        assert append(row(t)) == int(stock.add(TensorDict(row(t), batch_size=[])))
        if t % 3 == 0:  # priorities change between writes, so new rows get a moving maximum
            for buffer in (stock, appended):
                buffer.update_priority(torch.tensor([t % 7]), torch.tensor([t + 1.0]))
    mine, theirs = appended.state_dict(), stock.state_dict()
    assert torch.equal(appended.storage._storage.to_tensordict()["value"], stock.storage._storage["value"])
    assert mine["_writer"] == theirs["_writer"] and len(appended) == len(stock) == 7
    assert appended.sampler._max_priority == stock.sampler._max_priority
    assert [appended.sampler._sum_tree[i] for i in range(7)] == [stock.sampler._sum_tree[i] for i in range(7)]
    assert stock.storage._last_cursor == appended.storage._last_cursor


@pytest.mark.parametrize("trajectory", [None, 0])
@pytest.mark.parametrize("cache_values", [False, True])
def test_slices_drawn_after_appended_rows_see_the_new_rows(trajectory, cache_values):
    """``SliceSampler`` reads the trajectory ids and, in a circular storage, splits at the last
    written row (with a single trajectory id, only that split keeps slices from crossing it); with
    ``cache_values`` it keeps what it found until the storage's contents change."""
    stock, appended, append = stock_and_appended(
        lambda: SliceSampler(slice_len=2, traj_key="trajectory", cache_values=cache_values))
    for t in range(17):
        append(row(t, trajectory))
        stock.add(TensorDict(row(t, trajectory), batch_size=[]))
        if t == 0:
            continue  # no slice of 2 rows yet
        torch.manual_seed(t)
        drawn = appended.sample(4)["value"]
        torch.manual_seed(t)
        assert torch.equal(drawn, stock.sample(4)["value"])
