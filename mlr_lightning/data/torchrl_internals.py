"""Every access to TorchRL internals, in one place.

TorchRL has no public API for these; each function says what it needs and why. Checked against
torchrl 0.14.1 (pinned in pyproject.toml): re-check this file when the pin moves.
"""

from __future__ import annotations

from tensordict import TensorDictBase
from torchrl.collectors import Collector
import torch
from torchrl.data import LazyTensorStorage
from torchrl.data.replay_buffers import Sampler
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
