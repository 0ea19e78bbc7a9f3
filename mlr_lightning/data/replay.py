"""Uniform replay for DMC: transitions for the RL loss and K-step windows for MLR.

Both are drawn from a :class:`~mlr_lightning.data.frames.FrameStore`; one call of :meth:`sample`
gives one update's batch, in the batch contract every agent reads::

    TensorDict(batch_size=[])
      "rl":  [B]     pixels [B, 3S, H, W] uint8, action [B, A], reward [B, 1], terminated [B, 1],
                     next_pixels [B, 3S, H, W] uint8
      "mlr": [Bm, K] pixels [Bm, K, 3S, H, W] uint8, action [Bm, K, A], index [Bm, K]   (MLR on)
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl import timeit
from torchrl.data import SliceSampler

from mlr_lightning.data.frames import FrameStore


class Replay(ABC):
    """What the stream and the snapshots use of a replay: writing, one update's batch, persistence.

    A replay owns a :class:`FrameStore` and draws from it with its own rule (uniform or prioritized).
    """

    store: FrameStore

    @abstractmethod
    def sample(self, progress: float) -> TensorDict:
        """One update's batch; ``progress`` in [0, 1] is the fraction of training done."""

    def extend(self, steps: TensorDictBase, episode: Tensor | None = None) -> None:
        self.store.extend(steps, episode)

    def abandon_episode(self) -> None:
        self.store.abandon_episode()

    def state_dict(self) -> dict:
        """Contents, write cursor and sampler state (priorities): see :meth:`FrameStore.state_dict`."""
        return self.store.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.store.load_state_dict(state)

    @property
    def nbytes(self) -> int:
        """Bytes that :meth:`state_dict` holds."""
        return self.store.nbytes

    def __len__(self) -> int:
        return len(self.store)


class UniformReplay(Replay):
    def __init__(self, capacity: int, frame_stack: int, seq_len: int, batch_size: int,
                 window_batch_size: int | None, device: torch.device | str = "cpu"):
        self.store = FrameStore(capacity, frame_stack, device=device)
        self.seq_len, self.batch_size, self.window_batch_size = seq_len, batch_size, window_batch_size
        # Windows of seq_len consecutive rows of one episode. Final-observation rows carry their own
        # trajectory id, so a window never contains one (every step of a window needs an action).
        self.window_sampler = SliceSampler(slice_len=seq_len, traj_key="trajectory", strict_length=True)

    def sample(self, progress: float = 0.0) -> TensorDict:
        """One update's batch (see the module docstring); uniform, so ``progress`` is unused."""
        with timeit("data/sample_transitions"):
            batch = TensorDict({"rl": self.sample_transitions(self.batch_size)})
        if self.window_batch_size:
            with timeit("data/sample_windows"):
                batch["mlr"] = self.sample_windows(self.window_batch_size)
        return batch

    def sample_transitions(self, batch_size: int) -> TensorDict:
        """Uniform over stored transitions: ``pixels``, ``action``, ``reward``, ``terminated``, ``next_pixels``.

        Hand-written index sampling instead of a TorchRL sampler: ``RandomSampler`` cannot skip rows
        without a successor (final observations, the newest row), and ``SliceSampler(slice_len=2)``
        is uniform over episodes rather than transitions and ~30x slower per call.
        """
        index = self._valid_transition_rows(batch_size)
        rows = self.store.storage[index]
        return TensorDict(
            {
                "pixels": self.store.stacked_pixels(index),
                "action": rows["action"],
                "reward": rows["reward"],
                "terminated": rows["terminated"],
                "next_pixels": self.store.stacked_pixels((index + 1) % self.store.capacity),
            },
            batch_size=[batch_size],
        )

    def _valid_transition_rows(self, batch_size: int) -> Tensor:
        store = self.store
        has_action = store.storage[: len(store)]["has_action"].reshape(-1).clone()
        newest = (store.cursor - 1) % store.capacity
        has_action[newest] = False  # its next observation is not written yet
        valid = has_action.nonzero().squeeze(-1)
        if valid.numel() == 0:
            raise RuntimeError("the replay holds no complete transition yet")
        return valid[torch.randint(valid.numel(), (batch_size,))]

    def sample_windows(self, batch_size: int) -> TensorDict:
        """``batch_size`` windows of ``seq_len`` consecutive steps of one episode.

        Returns ``pixels`` ``[B, K, 3*S, H, W]`` uint8, ``action`` ``[B, K, A]``, ``index`` ``[B, K]``.
        """
        index, _ = self.window_sampler.sample(self.store.storage, batch_size * self.seq_len)
        index = (index if isinstance(index, Tensor) else index[0]).reshape(batch_size, self.seq_len)
        rows = self.store.storage[index.reshape(-1)]
        return TensorDict(
            {
                "pixels": self.store.stacked_pixels(index),
                "action": rows["action"].reshape(batch_size, self.seq_len, -1),
                "index": index,
            },
            batch_size=[batch_size, self.seq_len],
        )
