"""Prioritized replay of n-step transitions and K-step windows for Atari (rlpyt/SPR semantics).

:class:`PrioritizedReplay` draws from a :class:`~mlr_lightning.data.frames.FrameStore` (single
uint8 frames stored once, stacks rebuilt from ``step_count``, a final-observation row after every
episode end) whose buffer samples *start rows* with TorchRL's
:class:`~torchrl.data.PrioritizedSampler` (alpha, beta, sum tree) on torch trees kept on the
replay's device (:class:`~mlr_lightning.data.sum_tree.TreePrioritizedSampler`: no C++ extension
needed). From each start row ``i`` it builds, on the CPU, by walking forward through rows of the
same episode:

- the n-step return ``R = sum_{j<m} gamma^j r_{i+j}`` with ``m = min(n, steps left in the episode)``,
  the bootstrap discount ``gamma^m`` (0 when the episode *terminated* inside the n steps; a
  truncation bootstraps from its final-observation row) and the bootstrap frames (row ``i + m``);
- the MLR window of K rows ``i .. i+K-1``; rows past the episode's last step repeat that step
  (frames and action), as SPR's ``sanitize_batch`` (windows are padded, not discarded).

Start rows whose lookahead reaches past the newest written row are redrawn (their future is not
known yet); final-observation rows get priority 0. Importance weights are normalised by the batch
maximum, as rlpyt does (TorchRL normalises by the buffer's minimum priority instead). The importance
exponent beta is a pure function of training progress (so of the checkpointed step counter): linear
from ``beta_start`` to ``beta_end``, as rlpyt anneals it over the training steps.

One call of :meth:`PrioritizedReplay.sample` gives one update's batch, in the batch contract every
agent reads::

    TensorDict(batch_size=[])
      "rl":  [B]    index [B], weight [B] (importance weights, max 1), pixels [B, S, H, W] uint8,
                    action [B, A], return [B], discount [B] (gamma^m, 0 after a termination),
                    next_pixels [B, S, H, W] uint8
      "mlr": [B, K] pixels [B, K, S, H, W] uint8, action [B, K, A]   (MLR on; windows from the same rows)
      "beta": []    the importance exponent used

delivered deduplicated like the uniform replay's (:mod:`mlr_lightning.data.replay`): with windows,
one block of ``horizon + S`` frames per start row holds its stack, its bootstrap stack and its
window (``2S + K*S`` frames before); without, the two stacks' ``2S`` frames.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl import timeit

from mlr_lightning.data.frames import FrameBatch, FrameStore
from mlr_lightning.data.replay import Replay, index_arithmetic
from mlr_lightning.data.sum_tree import TreePrioritizedSampler
from mlr_lightning.data.torchrl_internals import set_sampler_generator

MAX_REDRAWS = 100  # rounds of redrawing invalid start rows before giving up


class PrioritizedReplay(Replay):
    def __init__(self, capacity: int, frame_stack: int, seq_len: int, n_step: int, discount: float,
                 alpha: float, priority_eps: float, batch_size: int, beta_start: float, beta_end: float,
                 windows: bool, device: torch.device | str = "cpu", new_priority: float | None = None,
                 official_nstep_bootstrap: bool = False):
        # The store's buffer samples through a sampler that tracks priorities (new rows get the
        # current maximum priority, as in PER); snapshots hold its sum and min trees.
        self.sampler = TreePrioritizedSampler(capacity, alpha=alpha, beta=1.0, eps=priority_eps, device=device)
        self.store = FrameStore(capacity, frame_stack, sampler=self.sampler, device=device)
        self.seq_len, self.n_step, self.discount = seq_len, n_step, discount
        self.batch_size, self.beta_start, self.beta_end, self.windows = batch_size, beta_start, beta_end, windows
        self.horizon = max(n_step, seq_len - 1)  # rows looked at after a start row
        self.capacity = capacity
        # None: new rows at the running maximum priority (PER, TorchRL); a number: that priority (rlpyt: 1).
        self.new_priority = new_priority
        # The pinned rlpyt's n-step target: a termination after the first step does not stop the bootstrap.
        self.official_nstep_bootstrap = official_nstep_bootstrap

    def place(self, setting: str, training_device: torch.device | str, pixels_shape) -> torch.device:
        """As :meth:`Replay.place`; the priorities go where the frames go."""
        device = super().place(setting, training_device, pixels_shape)
        self.sampler.to(device)
        return device

    def beta(self, progress: float) -> float:
        return self.beta_start + (self.beta_end - self.beta_start) * min(1.0, progress)

    def add(self, step: TensorDictBase, episode: int) -> None:
        """Store the step, then give its final-observation row (after an episode's last step) priority
        0 (never a start row) and, with a fixed ``new_priority``, the step's row that priority."""
        row = self.store.cursor
        self.store.add(step, episode)
        if self.new_priority is not None:
            self.sampler.update_priority(row, self.new_priority)
        if step["next", "done"]:  # final observations are never start rows
            self.sampler.update_priority((row + 1) % self.capacity, 0.0)

    def update_priority(self, index: Tensor, priority: Tensor) -> None:
        """New raw priorities (the sampler stores ``(p + eps) ** alpha``) for the start rows ``index``."""
        self.sampler.update_priority(index.to(self.sampler.device), priority.detach().float().to(self.sampler.device))

    # ---------------------------------------------------------------------------------- sampling
    def sample(self, progress: float, stacked: bool = False) -> TensorDict:
        """One update's batch (see the module docstring) at the beta of ``progress``."""
        beta = self.beta(progress)
        with timeit("data/sample_prioritized"):
            batch = self.sample_rows(self.batch_size, beta, self.windows, stacked)
        batch["beta"] = torch.tensor(beta, dtype=torch.float64)
        return batch

    def sample_rows(self, batch_size: int, beta: float, windows: bool, stacked: bool = False) -> TensorDict:
        """``batch_size`` prioritized start rows with their n-step targets (and MLR windows);
        deduplicated unless ``stacked``."""
        frames = FrameBatch(self.store, stacked)
        with index_arithmetic(stacked):
            batch = self._rows(batch_size, beta, windows, frames)
        return frames.finish(batch, self._frame_buffer())

    def _rows(self, batch_size: int, beta: float, windows: bool, frames: FrameBatch) -> TensorDict:
        self.sampler.beta = beta
        index, weight, ahead = self._draw(batch_size)
        steps = self._steps_left(index, ahead)  # [B] action rows of the episode from index on (<= horizon + 1)
        m = steps.clamp_max(self.n_step)  # [B]
        offsets = torch.arange(self.n_step)
        reward_rows = (index[:, None] + offsets) % self.capacity  # [B, n]
        rewards = self._field("reward")[reward_rows].reshape(batch_size, self.n_step)
        in_return = offsets[None, :] < m[:, None]
        returns = torch.where(in_return, rewards * self.discount ** offsets[None, :], 0.0).sum(-1)  # rows past m may be unwritten
        last = (index + m - 1) % self.capacity
        terminated = self._field("terminated")[last].reshape(-1) & (steps <= self.n_step)
        discount = torch.where(terminated, 0.0, self.discount ** m.double()).float()
        boot = m  # rows from the start row to the bootstrap frames
        if self.official_nstep_bootstrap:
            # rlpyt (pinned) records a done only at the first step: a later termination bootstraps from
            # the last state before the terminal, with gamma^n.
            late = terminated & (m > 1)
            discount = torch.where(late, self.discount ** self.n_step, discount).float()
            boot = torch.where(late, m - 1, m)
        rl = TensorDict(
            {
                "index": index,
                "weight": (weight / weight.max()).float(),
                "action": self._field("action")[index],
                "return": returns.float(),
                "discount": discount,
            },
            batch_size=[batch_size],
        )
        batch = TensorDict({"rl": rl})
        if windows:  # one block: the start row's stack, its bootstrap stack (m <= n) and its window
            block = frames.block(index, self.horizon + 1)
            k = torch.arange(self.seq_len)
            position = torch.minimum(k[None, :], steps[:, None] - 1)  # [B, K]: past the episode, its last step
            window = (index[:, None] + position) % self.capacity
            batch["mlr"] = TensorDict({"action": self._field("action")[window]}, batch_size=[batch_size, self.seq_len])
            frames.put(batch["mlr"], "pixels", block, position)
            frames.put(rl, "pixels", block, 0)
            frames.put(rl, "next_pixels", block, boot)
        else:  # two stacks per row: a block spanning the n steps between them would fetch more
            frames.put(rl, "pixels", frames.block(index, 1), 0)
            frames.put(rl, "next_pixels", frames.block((index + boot) % self.capacity, 1), 0)
        return batch

    def _draw(self, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
        """Prioritized start rows whose lookahead is known: index [B], TorchRL weight [B], ahead rows [B, H]."""
        kept_index, kept_weight = [], []
        need = batch_size
        set_sampler_generator(self.sampler, self.generator)
        for _ in range(MAX_REDRAWS):
            index, info = self.sampler.sample(self.store.storage, need)
            index = index.reshape(-1).cpu()  # the step fields live on the host
            valid = self._valid(index)
            kept_index.append(index[valid])
            kept_weight.append(info["priority_weight"].reshape(-1).cpu()[valid])
            need -= int(valid.sum())
            if need == 0:
                index = torch.cat(kept_index)
                return index, torch.cat(kept_weight), self._ahead(index)
        raise RuntimeError("the replay holds no start row with a known n-step future yet")

    def _ahead(self, index: Tensor) -> Tensor:
        return (index[:, None] + torch.arange(1, self.horizon + 1)) % self.capacity  # [B, H]

    def _same_episode(self, index: Tensor, ahead: Tensor) -> tuple[Tensor, Tensor]:
        """[B, H]: row i+j+1 is a written action row of i's episode; and row i+j+1 is written."""
        written = torch.arange(1, self.horizon + 1)[None, :] <= ((self.store.cursor - 1 - index) % self.capacity)[:, None]
        trajectory = self._field("trajectory")
        same = (trajectory[ahead].reshape(ahead.shape) == trajectory[index].reshape(-1, 1)) & written
        return same, written

    def _steps_left(self, index: Tensor, ahead: Tensor) -> Tensor:
        """Action rows of the episode from ``index`` on, counting ``index``, at most horizon + 1."""
        same, _ = self._same_episode(index, ahead)
        return 1 + same.long().cumprod(-1).sum(-1)

    def _valid(self, index: Tensor) -> Tensor:
        """Action rows whose episode either ends within the horizon or has horizon more rows written."""
        ahead = self._ahead(index)
        same, written = self._same_episode(index, ahead)
        first_break = same.long().cumprod(-1).sum(-1)  # [B] in 0..H
        known = (first_break == self.horizon) | written.gather(1, first_break.clamp_max(self.horizon - 1)[:, None])[:, 0]
        return self._field("has_action")[index].reshape(-1) & known

    def _field(self, key: str) -> Tensor:
        return self.store.field(key)
