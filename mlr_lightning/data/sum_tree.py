"""Prioritized sampling on sum/min trees held in torch tensors, on the replay's device.

TorchRL's :class:`~torchrl.data.PrioritizedSampler` keeps its priorities in segment trees from its
C++ extension, which loads only next to the torch build it was compiled against (torchrl 0.14.1's
fails on torch 2.11 and 2.13 with an undefined symbol, and the sampler then raises "SumSegmentTreeFp32
is not available"). GPU images and clusters bring their own torch, so the trees here are plain
tensors: the same layout and arithmetic as the extension's (leaves at ``capacity + i``, each node
``op(left, right)``, the same query and lower-bound walk, in the sampler's dtype), so probabilities,
importance weights and draws match TorchRL's (``tests/test_sum_tree.py``), and they pickle with the
snapshot like any tensor. :class:`TreePrioritizedSampler` is TorchRL's sampler with these trees and a
sampling step that runs the same on any device; the rest (priority updates, the running maximum,
``state_dict``) is TorchRL's. It reads the private ``_sum_tree``/``_min_tree``/``_init`` of
TorchRL's sampler (checked against torchrl 0.14.1, as :mod:`mlr_lightning.data.torchrl_internals`).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor
from torchrl.data import PrioritizedSampler
from torchrl.data.replay_buffers.samplers import Sampler
from torchrl.data.replay_buffers.storages import Storage


class SegmentTree:
    """A complete binary tree over ``size`` leaves in one tensor ``[2 * capacity]`` (``capacity`` the
    next power of two): node ``k`` holds ``op`` of nodes ``2k`` and ``2k + 1``, unused leaves the
    identity. Indexing reads and writes leaves; writes repair their ancestors level by level."""

    identity: float

    def __init__(self, size: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.size = size
        self.capacity = 1 << max(0, (size - 1).bit_length())
        self.depth = self.capacity.bit_length() - 1
        self.values = torch.full((2 * self.capacity,), self.identity, dtype=dtype, device=device)

    @property
    def device(self) -> torch.device:
        return self.values.device

    def to(self, device: torch.device | str) -> SegmentTree:
        """This tree with its values on ``device`` (itself if already there)."""
        if self.values.device == torch.device(device):
            return self
        moved = copy.copy(self)
        moved.values = self.values.to(device)
        return moved

    @staticmethod
    def op(left: Tensor, right: Tensor) -> Tensor:
        raise NotImplementedError

    def _leaves(self, index: Tensor | int) -> Tensor:
        return torch.as_tensor(index, dtype=torch.long, device=self.device).reshape(-1) + self.capacity

    def __getitem__(self, index: Tensor | int) -> Tensor:
        leaves = self._leaves(index)
        return self.values[leaves].reshape(torch.as_tensor(index).shape)

    def __setitem__(self, index: Tensor | int, value: Tensor | float) -> None:
        """Leaves ``index`` [N] get ``value`` (a scalar or [N]); a repeated index keeps its last value,
        as the extension's sequential writes do."""
        nodes = self._leaves(index)
        value = torch.as_tensor(value, dtype=self.values.dtype, device=self.device).reshape(-1).expand(nodes.shape)
        if nodes.numel() > 1:
            unique, inverse = torch.unique(nodes, return_inverse=True)
            last = torch.zeros_like(unique).scatter_reduce(
                0, inverse, torch.arange(nodes.numel(), device=self.device), "amax", include_self=False)
            nodes, value = unique, value[last]
        self.values[nodes] = value
        for _ in range(self.depth):
            nodes = torch.unique(nodes // 2)
            self.values[nodes] = self.op(self.values[2 * nodes], self.values[2 * nodes + 1])

    def query(self, start: int | Tensor = 0, end: int | Tensor | None = None) -> Tensor:
        """``op`` over leaves ``[start, end)`` (0-d, on the tree's device), in the extension's order."""
        left, right = int(start) + self.capacity, (self.size if end is None else int(end)) + self.capacity
        if left == self.capacity and right == 2 * self.capacity:
            return self.values[1]
        result = self.values.new_tensor(self.identity)
        while left < right:
            if left & 1:
                result = self.op(result, self.values[left])
                left += 1
            if right & 1:
                right -= 1
                result = self.op(result, self.values[right])
            left, right = left >> 1, right >> 1
        return result


class SumTree(SegmentTree):
    identity = 0.0

    @staticmethod
    def op(left: Tensor, right: Tensor) -> Tensor:
        return left + right

    def scan_lower_bound(self, mass: Tensor) -> Tensor:
        """Masses ``[B]`` -> the first leaves ``[B]`` whose prefix sum reaches each mass (``size`` past
        the total), walking down from the root in the tree's dtype."""
        mass = torch.as_tensor(mass, dtype=self.values.dtype, device=self.device).reshape(-1).clone()
        node = torch.ones_like(mass, dtype=torch.long)
        for _ in range(self.depth):
            left = 2 * node
            left_sum = self.values[left]
            right = mass > left_sum
            mass = torch.where(right, mass - left_sum, mass)
            node = torch.where(right, left + 1, left)
        return (node - self.capacity).clamp_max(self.size)


class MinTree(SegmentTree):
    identity = float(torch.finfo(torch.float32).max)  # the extension's identity, also for float64

    @staticmethod
    def op(left: Tensor, right: Tensor) -> Tensor:
        return torch.minimum(left, right)


class TreePrioritizedSampler(PrioritizedSampler):
    """TorchRL's :class:`~torchrl.data.PrioritizedSampler` on :class:`SumTree`/:class:`MinTree`.

    Sampling is TorchRL's CPU rule on every device: masses ``U[0, 1) * p_sum`` from the sampler's
    generator (``set_sampler_generator``; torch's global one when unset, where TorchRL uses NumPy's),
    the lower-bound leaf of each, a zero-priority leaf stepped back to the previous non-zero one,
    weights ``(p_i / p_min) ** -beta``. Indices and weights come back on the trees' device.
    """

    def __init__(self, max_capacity: int, alpha: float, beta: float, eps: float = 1e-8,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        # TorchRL's __init__ would warn that its extension is missing, though nothing here needs it.
        Sampler.__init__(self)
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        self._max_capacity, self._alpha, self._beta, self._eps = max_capacity, alpha, beta, eps
        self.reduction, self.dtype, self._max_priority_within_buffer = "max", dtype, False
        self._device = torch.device(device)
        self._init()

    def _init(self) -> None:
        self._sum_tree = SumTree(self._max_capacity, self.dtype, self._device)
        self._min_tree = MinTree(self._max_capacity, self.dtype, self._device)
        self._max_priority = None

    def _maybe_init_from_storage(self, storage: Storage | None) -> None:
        """The trees stay where the replay put them, whatever the storage's device."""

    def to(self, device: torch.device | str) -> None:
        """Keep the trees (the priorities) on ``device`` from now on."""
        self._device = torch.device(device)
        self._sum_tree, self._min_tree = self._sum_tree.to(self._device), self._min_tree.to(self._device)

    def sample(self, storage: Storage, batch_size: int) -> tuple[Tensor, dict]:
        rows = len(storage)
        if rows == 0:
            raise RuntimeError("Cannot sample from an empty storage.")
        p_sum, p_min = self._sum_tree.query(0, rows), self._min_tree.query(0, rows)
        mass = torch.rand(batch_size, generator=self._rng).to(self.device) * p_sum
        index = self._sum_tree.scan_lower_bound(mass).clamp_max(rows - 1)
        weight = self._sum_tree[index]
        zero = weight == 0
        while bool(zero.any()):
            index = torch.where(zero, index - 1, index)
            if bool((index < 0).any()):
                raise RuntimeError("every stored row has priority 0")
            weight = self._sum_tree[index]
            zero = weight == 0
        return index, {"priority_weight": torch.pow(weight / p_min, -self._beta)}

    def state_dict(self) -> dict:
        """TorchRL's state with the trees on the host, so a snapshot loads on any device."""
        state = super().state_dict()
        state["_sum_tree"], state["_min_tree"] = state["_sum_tree"].to("cpu"), state["_min_tree"].to("cpu")
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._sum_tree = as_tree(self._sum_tree, SumTree, self.dtype).to(self._device)
        self._min_tree = as_tree(self._min_tree, MinTree, self.dtype).to(self._device)


def as_tree(tree, kind: type[SegmentTree], dtype: torch.dtype) -> SegmentTree:
    """``tree``, or the same leaves in a ``kind`` (a snapshot written with TorchRL's extension trees)."""
    if isinstance(tree, SegmentTree):
        return tree
    converted = kind(tree.size, dtype)
    converted[torch.arange(tree.size)] = torch.as_tensor(tree[torch.arange(tree.size)])
    return converted
