"""Every access to TorchRL internals, in one place.

TorchRL has no public API for these; each function says what it needs and why. Checked against
torchrl 0.14.1 (pinned in pyproject.toml): re-check this file when the pin moves.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.utils import expand_as_right
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage
from torchrl.data.replay_buffers import Sampler
from torchrl.data.replay_buffers.writers import TensorDictRoundRobinWriter
from torchrl.envs import EnvBase

CHECKED_AGAINST = "0.14.1"


def storage_fields(storage: LazyTensorStorage) -> TensorDictBase:
    """The storage's whole ``[capacity]`` TensorDict, without a copy.

    ``storage[index]`` goes through advanced indexing and copies; gathering frames with
    ``index_select`` on the underlying tensor is ~7x faster, and priorities need written-or-not rows.
    """
    return storage._storage


def storage_nbytes(storage: LazyTensorStorage) -> int:
    """Bytes of the allocated storage (TorchRL's ``dumps`` writes the whole capacity)."""
    return storage._storage.bytes() if storage.initialized else 0


def settle_loaded_storage(storage: LazyTensorStorage, device: torch.device) -> None:
    """After ``load_state_dict`` into an empty storage: its TensorDict has lost its batch size (rows
    are then written only through tensor indices) and keeps the tensors where the state dict had
    them, whatever the storage's ``device``. Restores both."""
    if not storage.initialized:
        return
    fields = storage._storage
    if fields.batch_size != torch.Size([storage.max_size]):
        fields.batch_size = [storage.max_size]
    if any(value.device != device for value in fields.values(True, True)):
        storage._storage = fields.to(device)


def collector_observation(collector: Collector) -> TensorDictBase:
    """The observation the collector holds for its next step: its ``state_dict`` leaves it out."""
    return collector._carrier


def set_collector_observation(collector: Collector, observation: TensorDictBase) -> None:
    collector._carrier = observation


def inner_env(env: EnvBase):
    """The wrapped library environment below TorchRL's wrapper (``DMControlWrapper``/``GymWrapper``)."""
    return env.base_env._env


def set_sampler_generator(sampler: Sampler, generator: torch.Generator | None) -> None:
    """Make a sampler draw from ``generator`` (None: torch's global generator, TorchRL's default).
    Samplers read ``_rng``; ``ReplayBuffer(generator=...)`` sets it only for the buffer's own sampler."""
    sampler._rng = generator


class SliceWriter(TensorDictRoundRobinWriter):
    """TorchRL's round-robin writer, writing rows that do not wrap around with a slice.

    The stock writer always indexes the storage with a tensor of rows, an advanced-indexing write;
    with torch's two intra-op threads on a loaded two-core machine one such write of a frame took
    0.2-0.3 ms against 5-13 us for the slice copy. The rest is the stock ``extend``: cursor, write
    count, the ``"index"`` field and the samplers' update hooks (new rows' priorities).
    """

    def extend(self, data: TensorDictBase) -> torch.Tensor:
        start, count = self._cursor, len(data)
        size = self._storage._max_size_along_dim0(batched_data=data)
        if start + count > size:
            return super().extend(data)
        index = torch.arange(start, start + count, dtype=torch.long, device=data.device or "cpu")
        self._cursor = (start + count) % size
        self._write_count += count
        data.set("index", expand_as_right(index, data))
        self._storage.set(slice(start, start + count), data)
        self._bump_generation(index, data)
        index = self._replicate_index(index)
        self._mark_update_entities(index)
        return index
