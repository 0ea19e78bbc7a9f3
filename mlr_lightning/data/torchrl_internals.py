"""Every access to TorchRL internals, in one place.

TorchRL has no public API for these; each function says what it needs and why. Checked against
torchrl 0.14.1 (pinned in pyproject.toml): re-check this file when the pin moves.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers import Sampler

CHECKED_AGAINST = "0.14.1"


def storage_fields(storage: LazyTensorStorage) -> TensorDictBase:
    """The storage's whole ``[capacity]`` TensorDict, without a copy.

    ``storage[index]`` goes through advanced indexing and copies; gathering frames with
    ``index_select`` on the underlying tensor is several times faster (docs/benchmarks.md), and
    priorities need written-or-not rows.
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


def set_sampler_generator(sampler: Sampler, generator: torch.Generator | None) -> None:
    """Make a sampler draw from ``generator`` (None: torch's global generator, TorchRL's default).
    Samplers read ``_rng``; ``ReplayBuffer(generator=...)`` sets it only for the buffer's own sampler."""
    sampler._rng = generator


class RowAppender:
    """Writes rows into a ``TensorDictReplayBuffer`` one at a time at its writer's cursor, as
    ``buffer.add`` does.

    ``buffer.add`` builds and validates a TensorDict, indexes the storage through it and takes the
    writer's locks, a sixth of a fast-rendered dm_control step (docs/benchmarks.md, "Data path").
    Here the values go straight into the storage's column tensors, with the stock bookkeeping of ``add`` and ``LazyTensorStorage.set``: the
    writer's cursor and count, the storage's last cursor, length and mutation revision (samplers
    such as ``SliceSampler`` cache what they derive from the contents until it changes), the
    ``"index"`` column, the update hooks of the samplers attached to the storage (a
    ``PrioritizedSampler`` gives the new row its default priority) and the buffer's sampler's
    ``add``. The first row goes through ``buffer.add``, which allocates the columns from it. Rows
    must hold every column. ``tests/test_stacked_env.py`` checks the result against ``buffer.add``.
    """

    def __init__(self, buffer: TensorDictReplayBuffer):
        self.buffer = buffer
        self._fields, self._columns = None, {}  # the storage's TensorDict and its column tensors

    def __call__(self, row: dict[str, torch.Tensor]) -> int:
        storage, writer = self.buffer._storage, self.buffer._writer
        if not storage.initialized:
            return int(self.buffer.add(TensorDict(row, batch_size=[])))
        if storage._storage is not self._fields:  # first row, or the storage was loaded or moved
            self._fields = storage._storage
            self._columns = dict(self._fields.items())
        index = writer._cursor
        writer._cursor = (index + 1) % storage.max_size
        writer._write_count += 1
        storage._set_last_cursor(index)  # what LazyTensorStorage.set records, in its order
        storage._len = min(storage._len + 1, storage.max_size)
        for key, value in row.items():
            self._columns[key][index] = value
        self._columns["index"][index] = index
        storage._bump_mutation_revision()
        writer._mark_update_entities(index)
        self.buffer._sampler.add(index)
        return index
