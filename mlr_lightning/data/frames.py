"""The replay's storage layout: single uint8 frames, stacked at sample time.

Each stored row is one observation frame ``o_t`` ``[3, H, W]`` with the transition that leaves it
(``a_t``, ``r_{t+1}``, termination flags). After the last transition of an episode one more row
holds the final observation, which truncated episodes need for bootstrapping; it has
``has_action=False``. So every frame is stored once (TorchRL's ``compact_obs`` would drop that final
observation), and the next observation of row ``i`` is always row ``i + 1``.

Stacks of ``frame_stack`` frames are rebuilt from ``step_count``: slot ``j`` of row ``i`` is row
``i - min(frame_stack - 1 - j, step_count_i)``, which repeats the first frame at an episode start,
exactly like ``CatFrames(padding="same")`` does while acting.

Batches are deduplicated (:class:`FrameBatch`): the stacks at rows ``i .. i + L - 1`` of one episode
all lie in the ``L + S - 1`` rows ``i - S + 1 .. i + L - 1``, so a batch carries those frames once,
``"frames"`` ``[N, C, H, W]``, and for every stacked field the frame of each slot,
``("stacks", key)`` ``[..., S]``. :func:`assemble_stacks` builds the stacks from them where the
batch is used, on the training device. A transition's observation and next observation share
``S - 1`` frames; a K-step window needs ``K + S - 1`` frames instead of ``K * S``.
"""

from __future__ import annotations


import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers import Sampler

from mlr_lightning.data.torchrl_internals import RowAppender, settle_loaded_storage, storage_fields, storage_nbytes

FRAMES, STACKS = "frames", "stacks"  # the batch keys of a deduplicated batch (see the module docstring)
TRUE, FALSE = torch.ones(1, dtype=torch.bool), torch.zeros(1, dtype=torch.bool)  # has_action


class FrameStore:
    """Two ``LazyTensorStorage`` written in lockstep, a row at a time, as by TorchRL's round-robin
    writers (:class:`~mlr_lightning.data.torchrl_internals.RowAppender`): ``frames`` holds the uint8
    pixels, ``storage`` the per-step fields. Keeping the pixels apart lets samplers,
    which scan whole fields of the storage (``SliceSampler`` reads ``storage[:]``), touch a few MB
    instead of copying gigabytes of frames on every call.

    The frames live on ``device`` (``replay.device``: the host or the training GPU, see :meth:`place`);
    the step fields, a few bytes per row, always stay on the host, where the index arithmetic of
    sampling runs. So sampling draws the same rows on every device, needs no device synchronisation,
    and with the frames on the GPU only row indices cross the bus.

    The replays (:class:`~mlr_lightning.data.replay.UniformReplay`,
    :class:`~mlr_lightning.data.prioritized.PrioritizedReplay`) sample from a store; ``sampler`` is
    the TorchRL sampler that tracks the step rows (a ``PrioritizedSampler`` keeps priorities).
    """

    def __init__(self, capacity: int, frame_stack: int, sampler: Sampler | None = None,
                 device: torch.device | str = "cpu"):
        self.frame_stack = frame_stack
        self.storage = LazyTensorStorage(capacity, device="cpu")
        self.buffer = TensorDictReplayBuffer(storage=self.storage, sampler=sampler)
        self._append_fields = RowAppender(self.buffer)
        self._frame_storage(capacity, device)

    def _frame_storage(self, capacity: int, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.frames = LazyTensorStorage(capacity, device=self.device)
        # A TensorDict ({"pixels": ...}) rather than a bare tensor: TorchRL's ``loads`` can refill
        # only TensorDict storages.
        self.frame_buffer = TensorDictReplayBuffer(storage=self.frames)
        self._append_frame = RowAppender(self.frame_buffer)

    def place(self, device: torch.device | str) -> None:
        """Keep the frames on ``device`` from now on; only before anything is written or loaded."""
        if self.frames.initialized:
            raise RuntimeError("the replay's frames are already stored; place() comes before any write or load")
        self._frame_storage(self.capacity, device)

    def __len__(self) -> int:
        return len(self.storage)

    @property
    def capacity(self) -> int:
        return self.storage.max_size

    @property
    def cursor(self) -> int:
        """Row the next write goes to (the oldest row once the storage is full)."""
        return self.buffer.write_count % self.capacity

    # ----------------------------------------------------------------------------------- writing
    def add(self, step: TensorDictBase, episode: int) -> None:
        """Store one agent step as the collector delivers it (``[]``, stacked ``pixels`` ``[C*S, H, W]``)
        of episode number ``episode``: its newest frame with the transition that leaves it, and after
        an episode's last step a row with the final observation."""
        channels = step["pixels"].shape[-3] // self.frame_stack
        terminated = step["next", "terminated"]
        self._append(step["pixels"][-channels:], action=step["action"], reward=step["next", "reward"],
                     terminated=terminated, step_count=step["step_count"], has_action=TRUE,
                     trajectory=torch.tensor(2 * episode))
        if step["next", "done"]:
            self._append(step["next", "pixels"][-channels:], action=torch.zeros_like(step["action"]),
                         reward=torch.zeros_like(step["next", "reward"]), terminated=terminated,
                         step_count=step["next", "step_count"], has_action=FALSE,
                         trajectory=torch.tensor(2 * episode + 1))

    def _append(self, frame: Tensor, **fields: Tensor) -> None:
        """One row into both storages, in lockstep."""
        self._append_frame({"pixels": frame})
        self._append_fields(fields)

    def abandon_episode(self) -> None:
        """The running episode ended without a final observation (its environment crashed): its
        newest row has no successor, so it stops being a transition."""
        if len(self):
            newest = (self.cursor - 1) % self.capacity
            self.field("has_action")[newest] = False

    # ------------------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        """Rows, frames, write cursors and the sampler's state (priorities), as tensors in memory.

        Snapshots ``torch.save`` it with ordinary file writes: TorchRL's own ``dumps`` writes through
        memory maps, where a disk that fills up kills the process with SIGBUS instead of raising.
        The frames come to the host (no copy when they live there), so a snapshot loads on any
        device whatever ``replay.device`` was.
        """
        return {"steps": self.buffer.state_dict(), "frames": on_host(self.frame_buffer.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state["steps"])
        self.frame_buffer.load_state_dict(state["frames"])
        settle_loaded_storage(self.storage, torch.device("cpu"))
        settle_loaded_storage(self.frames, self.device)

    @property
    def nbytes(self) -> int:
        """Bytes of the storages, which a snapshot writes whole (capacity, not only the filled part)."""
        return storage_nbytes(self.storage) + storage_nbytes(self.frames)

    # ---------------------------------------------------------------------------------- sampling
    def _age_order(self, index: Tensor) -> Tensor:
        """Position of each row from the oldest stored row (0 = oldest)."""
        if len(self) < self.capacity:
            return index
        return (index - self.cursor) % self.capacity

    def reach(self, index: Tensor) -> Tensor:
        """How many rows before ``index`` its stack may use: its step in the episode, but never past
        the oldest stored row (the start of the oldest episode may be overwritten)."""
        step_count = self.field("step_count")[index.reshape(-1)].reshape(index.shape)
        return torch.minimum(step_count, self._age_order(index))

    def stack_rows(self, index: Tensor) -> Tensor:
        """Rows ``[...]`` -> the rows of their stacks' slots ``[..., S]``, oldest slot first."""
        back = torch.arange(self.frame_stack - 1, -1, -1)  # [S]
        return (index[..., None] - torch.minimum(back, self.reach(index)[..., None])) % self.capacity

    def block_rows(self, anchor: Tensor, length: int) -> Tensor:
        """Anchor rows ``[B]`` -> the rows ``[B, length + S - 1]`` that hold every frame of the stacks at
        ``anchor + p`` for ``p < length`` (rows of the anchor's episode): the stack at ``anchor + p``
        is frames ``p .. p + S - 1`` of the block. Rows before the episode's start repeat its first frame."""
        offsets = torch.arange(1 - self.frame_stack, length)  # [L + S - 1]
        return (anchor[:, None] + torch.maximum(offsets, -self.reach(anchor)[:, None])) % self.capacity

    def gather(self, rows: Tensor, out: Tensor | None = None) -> Tensor:
        """Rows ``[N]`` (on the host) -> their frames ``[N, C, H, W]`` uint8 on the replay's device,
        written into ``out`` when given (resized on first use)."""
        # index_select on the storage's tensor: LazyTensorStorage's own indexing is advanced indexing,
        # several times slower for [N, 3, 100, 100] uint8 (docs/benchmarks.md).
        frames = storage_fields(self.frames)["pixels"]
        rows = rows.to(self.device, non_blocking=True)
        return frames.index_select(0, rows) if out is None else torch.index_select(frames, 0, rows, out=out)

    def stacked_pixels(self, index: Tensor) -> Tensor:
        """Rows ``[...]`` -> stacked frames ``[..., C*S, H, W]`` (uint8), gathered slot by slot: the
        stacks of the original sampling path, the reference that deduplicated batches must equal."""
        frames = self.gather(self.stack_rows(index).reshape(-1))  # [N*S, C, H, W]
        return frames.reshape(*index.shape, self.frame_stack * frames.shape[-3], *frames.shape[-2:])

    def field(self, key: str) -> Tensor:
        """One per-step field of the whole storage ``[capacity, ...]``, without copying it."""
        return storage_fields(self.storage)[key]


def on_host(tree):
    """A (nested) state dict with its tensors on the host."""
    if isinstance(tree, Tensor):
        return tree.cpu()
    if isinstance(tree, dict):
        return type(tree)((key, on_host(value)) for key, value in tree.items())
    return tree


class FrameBatch:
    """The frames of one batch, each fetched once (see the module docstring).

    A replay asks for :meth:`block` of rows around each sampled anchor row, then :meth:`put` s each
    stacked field into its TensorDict as frame slots of that block; :meth:`finish` gathers all
    blocks' frames with one ``index_select`` into ``batch["frames"]``. With ``stacked=True`` it
    builds the stacks on the host instead, slot by slot (:meth:`FrameStore.stacked_pixels`): the
    original path, kept as the reference for tests and benchmarks.
    """

    def __init__(self, store: FrameStore, stacked: bool = False):
        self.store, self.stacked = store, stacked
        self.rows: list[Tensor] = []
        self.count = 0  # frames requested so far

    def block(self, anchor: Tensor, length: int) -> tuple[Tensor, Tensor]:
        """Frames for the stacks at ``anchor + p``, ``0 <= p < length``; returns (anchor, block offset) [B]."""
        if self.stacked:
            return anchor, anchor
        rows = self.store.block_rows(anchor, length)  # [B, F]
        offset = self.count + rows.shape[1] * torch.arange(rows.shape[0])
        self.rows.append(rows.reshape(-1))
        self.count += rows.numel()
        return anchor, offset

    def put(self, data: TensorDictBase, key: str, block: tuple[Tensor, Tensor], position: Tensor | int = 0) -> None:
        """``data[key]`` is the stack at rows ``anchor + position`` (``position`` [B] or [B, K], or an int)."""
        anchor, offset = block
        position = torch.as_tensor(position)
        shape = (-1,) + (1,) * max(position.dim() - 1, 0)  # anchor/offset [B] against position [B, K]
        if self.stacked:
            data[key] = self.store.stacked_pixels((anchor.view(shape) + position) % self.store.capacity)
        else:
            slots = (offset.view(shape) + position)[..., None] + torch.arange(self.store.frame_stack)
            data[STACKS, key] = slots.expand(*data.batch_size, self.store.frame_stack)

    def finish(self, batch: TensorDict, out: Tensor | None = None) -> TensorDict:
        """The batch with its frames (gathered into ``out`` if given)."""
        if not self.stacked:
            batch[FRAMES] = self.store.gather(torch.cat(self.rows), out)
        return batch


def assemble_stacks(batch: TensorDictBase) -> TensorDictBase:
    """A deduplicated batch -> the same batch with its stacked fields (``[..., C*S, H, W]`` uint8), built
    where the batch is, e.g. on the training device after the transfer. Other batches pass unchanged."""
    if FRAMES not in batch.keys():
        return batch
    frames = batch.pop(FRAMES)
    for group in list(batch.keys()):
        data = batch[group]
        if not isinstance(data, TensorDictBase) or STACKS not in data.keys():
            continue
        for key, slots in data.pop(STACKS).items():
            stacked = frames.index_select(0, slots.reshape(-1).to(frames.device))
            data[key] = stacked.view(*slots.shape[:-1], slots.shape[-1] * frames.shape[1], *frames.shape[2:])
    return batch
