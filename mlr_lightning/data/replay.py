"""Uniform replay for DMC: transitions for the RL loss and K-step windows for MLR.

Both are drawn from a :class:`~mlr_lightning.data.frames.FrameStore`; one call of :meth:`sample`
gives one update's batch, in the batch contract every agent reads::

    TensorDict(batch_size=[])
      "rl":  [B]     pixels [B, 3S, H, W] uint8, action [B, A], reward [B, 1], terminated [B, 1],
                     next_pixels [B, 3S, H, W] uint8
      "mlr": [Bm, K] pixels [Bm, K, 3S, H, W] uint8, action [Bm, K, A], index [Bm, K]   (MLR on)

The replay delivers it deduplicated: instead of the stacked ``pixels``/``next_pixels`` fields the
batch holds ``"frames"`` ``[N, 3, H, W]`` (every frame once, on the replay's device) and, per
stacked field, ``("stacks", key)`` ``[..., S]`` (the frame of each slot).
:func:`~mlr_lightning.data.frames.assemble_stacks` turns it into the contract above; the agents
call it after the batch reached the training device. ``sample(stacked=True)`` stacks on the host
instead (the original path, bit-identical after assembly; tests and benchmarks compare the two).
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from contextlib import nullcontext
from typing import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl import timeit
from torchrl.data import SliceSampler

from mlr_lightning.config import ConfigError
from mlr_lightning.data.frames import FrameBatch, FrameStore
from mlr_lightning.data.threads import one_intra_op_thread
from mlr_lightning.data.torchrl_internals import set_sampler_generator


def index_arithmetic(stacked: bool):
    """Drawing rows and building a batch's index tensors: small ops, on one thread (see
    :func:`one_intra_op_thread`); the frame gather that follows keeps every thread. The stacked
    reference path runs as it always did."""
    return nullcontext() if stacked else one_intra_op_thread()


FREE_MEMORY_SHARE = 0.75  # of a GPU's free memory the replay may take; the rest is the update's


class Replay(ABC):
    """What the stream and the snapshots use of a replay: writing, one update's batch, persistence.

    A replay owns a :class:`FrameStore` and draws from it with its own rule (uniform or prioritized).
    """

    store: FrameStore
    # Where sampling draws its random numbers: None is torch's global generator (the default); the
    # stream's prefetching thread gives the replay a generator of its own.
    generator: torch.Generator | None = None
    _frame_buffers: list[Tensor] = []  # see recycle_frames
    _turn = 0

    def recycle_frames(self, buffers: int = 2) -> None:
        """Gather the frames of each batch into one of ``buffers`` tensors, in turn, instead of a new
        one: on the host a new tensor of a paper-size batch's frames (130 MB) costs its page faults
        at every batch, about 3x the gather itself. For a consumer done with a batch's frames before
        it asks for the batch ``buffers`` later, like the stream, whose batches are assembled (or
        copied to the training device) when their update starts."""
        self._frame_buffers = [torch.empty(0, dtype=torch.uint8, device=self.store.device) for _ in range(buffers)]

    def _frame_buffer(self) -> Tensor | None:
        if not self._frame_buffers:
            return None
        self._turn = (self._turn + 1) % len(self._frame_buffers)
        return self._frame_buffers[self._turn]

    @abstractmethod
    def sample(self, progress: float, stacked: bool = False) -> TensorDict:
        """One update's batch; ``progress`` in [0, 1] is the fraction of training done. Deduplicated
        (see the module docstring) unless ``stacked``."""

    def place(self, setting: str, training_device: torch.device | str, pixels_shape: Sequence[int]) -> torch.device:
        """Keep the frames where ``replay.device`` (``setting``) says: "cpu", "auto" (``training_device``)
        or a device; before anything is written or loaded. On a GPU the whole capacity is allocated at
        the first write, so it is checked here against the GPU's free memory: an explicit device that
        lacks it is refused naming the key, "auto" falls back to the host. Returns the device used.
        ``pixels_shape`` is the stacked observation's ``[C*S, H, W]``."""
        device = torch.device(training_device if setting == "auto" else setting)
        if device.type == "cuda":
            needed = self.store.capacity * math.prod(pixels_shape) // self.store.frame_stack  # uint8 frames
            free = torch.cuda.mem_get_info(device)[0]
            if needed > FREE_MEMORY_SHARE * free:
                problem = (f"the replay's frames need {needed / 2**30:.1f} GiB (replay.capacity={self.store.capacity} "
                           f"frames of {math.prod(pixels_shape) // self.store.frame_stack} bytes), more than "
                           f"{FREE_MEMORY_SHARE:.0%} of the {free / 2**30:.1f} GiB free on {device}")
                if setting != "auto":
                    raise ConfigError(f"replay.device={setting}: {problem}; set replay.device=cpu or lower replay.capacity")
                warnings.warn(f"replay.device=auto: {problem}; keeping the replay on the host")
                device = torch.device("cpu")
        self.store.place(device)
        return device

    def add(self, step: TensorDictBase, episode: int) -> None:
        """Store one agent step of episode number ``episode`` (see :meth:`FrameStore.add`)."""
        self.store.add(step, episode)

    def extend(self, steps: TensorDictBase, episode: Tensor) -> None:
        """Store consecutive agent steps ``[T]`` of the episodes numbered ``episode`` ``[T]``, one
        :meth:`add` each (tests and benchmarks fill replays with it)."""
        for step, number in zip(steps.reshape(-1).unbind(0), episode.reshape(-1).tolist()):
            self.add(step, number)

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
                 window_batch_size: int | None, device: torch.device | str = "cpu", official_windows: bool = False):
        self.store = FrameStore(capacity, frame_stack, device=device)
        self.seq_len, self.batch_size, self.window_batch_size = seq_len, batch_size, window_batch_size
        self.official_windows = official_windows
        # Windows of seq_len consecutive rows of one episode. Final-observation rows carry their own
        # trajectory id, so a window never contains one (every step of a window needs an action).
        self.window_sampler = SliceSampler(slice_len=seq_len, traj_key="trajectory", strict_length=True)

    def sample(self, progress: float = 0.0, stacked: bool = False) -> TensorDict:
        """One update's batch (see the module docstring); uniform, so ``progress`` is unused."""
        frames = FrameBatch(self.store, stacked)
        with index_arithmetic(stacked):
            with timeit("data/sample_transitions"):
                batch = TensorDict({"rl": self.transitions(self._valid_transition_rows(self.batch_size), frames)})
            if self.window_batch_size:
                with timeit("data/sample_windows"):
                    batch["mlr"] = self.windows(self._window_rows(self.window_batch_size), frames)
        with timeit("data/gather_frames"):
            return frames.finish(batch, self._frame_buffer())

    def sample_transitions(self, batch_size: int) -> TensorDict:
        """Uniform over stored transitions, stacked on the host: ``pixels``, ``action``, ``reward``,
        ``terminated``, ``next_pixels``."""
        return self.transitions(self._valid_transition_rows(batch_size), FrameBatch(self.store, stacked=True))

    def sample_windows(self, batch_size: int) -> TensorDict:
        """``batch_size`` windows of ``seq_len`` consecutive steps of one episode, stacked on the host.

        Returns ``pixels`` ``[B, K, 3*S, H, W]`` uint8, ``action`` ``[B, K, A]``, ``index`` ``[B, K]``.
        """
        return self.windows(self._window_rows(batch_size), FrameBatch(self.store, stacked=True))

    def transitions(self, index: Tensor, frames: FrameBatch) -> TensorDict:
        """The transitions leaving rows ``index`` [B]; the next observation of row i is row i + 1."""
        field = self.store.field
        rl = TensorDict({"action": field("action")[index], "reward": field("reward")[index],
                         "terminated": field("terminated")[index]}, batch_size=index.shape)
        block = frames.block(index, 2)
        frames.put(rl, "pixels", block, 0)
        frames.put(rl, "next_pixels", block, 1)
        return rl

    def _official_window_rows(self, batch_size: int) -> Tensor:
        """[B', K] rows, B' <= B, by the official sampler's rule: 2B start rows uniform over the stored
        rows without wrapping around a full buffer, of which the first B whose K steps are steps of
        one episode and hold no episode-final transition are kept."""
        store, k = self.store, torch.arange(self.seq_len)
        starts = torch.randint(max(1, len(store) - self.seq_len), (2 * batch_size,), generator=self.generator)
        rows = starts[:, None] + k  # [2B, K]
        has_action = store.field("has_action")
        final_next = ~has_action[(rows + 1) % store.capacity].reshape(rows.shape)  # the step that ends an episode
        trajectory = store.field("trajectory")[rows].reshape(rows.shape)
        newest = (store.cursor - 1) % store.capacity
        ok = (has_action[rows].reshape(rows.shape).all(1) & (trajectory == trajectory[:, :1]).all(1)
              & ~final_next.any(1) & ~(rows == newest).any(1))
        kept = rows[ok][:batch_size]
        if kept.shape[0] == 0:
            raise RuntimeError("no MLR window without an episode end among the drawn candidates yet")
        return kept

    def windows(self, index: Tensor, frames: FrameBatch) -> TensorDict:
        """The windows of rows ``index`` [B, K]."""
        batch_size = index.shape[0]
        mlr = TensorDict({"action": self.store.field("action")[index.reshape(-1)].reshape(batch_size, self.seq_len, -1),
                          "index": index}, batch_size=index.shape)
        frames.put(mlr, "pixels", frames.block(index[:, 0], self.seq_len), torch.arange(self.seq_len).expand_as(index))
        return mlr

    def _valid_transition_rows(self, batch_size: int) -> Tensor:
        """Uniform over rows with a stored successor (not a final observation, not the newest row).

        Hand-written index sampling instead of a TorchRL sampler: ``RandomSampler`` cannot skip rows
        without a successor, and ``SliceSampler(slice_len=2)`` is uniform over episodes rather than
        transitions and much slower per call (docs/benchmarks.md). Draws ``randint(number of valid rows)`` and maps the
        rank to its row through the few invalid rows, instead of listing every valid row.
        """
        store = self.store
        invalid = ~store.field("has_action")[: len(store)].reshape(-1)
        invalid[(store.cursor - 1) % store.capacity] = True  # the newest row: its next observation is not written yet
        invalid = invalid.nonzero().squeeze(-1)  # sorted
        count = len(store) - invalid.numel()
        if count <= 0:
            raise RuntimeError("the replay holds no complete transition yet")
        rank = torch.randint(count, (batch_size,), generator=self.generator)
        # The rank-th valid row lies after every invalid row i whose valid predecessors (invalid[i] - i) <= rank.
        return rank + torch.searchsorted(invalid - torch.arange(invalid.numel()), rank, right=True)

    def _window_rows(self, batch_size: int) -> Tensor:
        """[B, K] rows of windows from TorchRL's ``SliceSampler`` (uniform over episodes, then over starts)."""
        if self.official_windows:
            return self._official_window_rows(batch_size)
        set_sampler_generator(self.window_sampler, self.generator)
        index, _ = self.window_sampler.sample(self.store.storage, batch_size * self.seq_len)
        return (index if isinstance(index, Tensor) else index[0]).reshape(batch_size, self.seq_len)
