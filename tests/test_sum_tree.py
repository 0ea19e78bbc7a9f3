"""The torch sum/min trees against TorchRL's PrioritizedSampler (its C++ extension's trees).

Where the extension does not load (a torch it was not built against, e.g. torch 2.11 with torchrl
0.14.1), the same properties are checked against a float64 NumPy reference: probabilities from the
leaves, draws as the first row whose cumulative priority reaches each mass.
"""

import mlr_lightning  # noqa: F401

import io

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, PrioritizedSampler
from torchrl.data.replay_buffers.samplers import prioritized as torchrl_prioritized

from mlr_lightning.data.prioritized import PrioritizedReplay
from mlr_lightning.data.sum_tree import MinTree, SumTree, TreePrioritizedSampler
from mlr_lightning.data.torchrl_internals import set_sampler_generator
from tests.test_atari_replay import episode, store

EXTENSION_LOADS = torchrl_prioritized.SumSegmentTreeFp32 is not None
CAPACITY, STORED, ALPHA, BETA, EPS = 1000, 700, 0.5, 0.4, 1e-6


def filled_storage(rows: int) -> LazyTensorStorage:
    storage = LazyTensorStorage(CAPACITY)
    storage.set(torch.arange(rows), TensorDict({"x": torch.zeros(rows)}, batch_size=[rows]))
    return storage


def priorities(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    raw = torch.rand(STORED, generator=generator) * 10
    raw[torch.randperm(STORED, generator=generator)[:50]] = 0.0  # final-observation rows
    return raw


def reference_draws(leaves: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """First row whose cumulative priority reaches each mass; zero-priority rows stepped back."""
    index = np.minimum(np.searchsorted(np.cumsum(leaves), mass, side="left"), len(leaves) - 1)
    while (leaves[index] == 0).any():
        index = np.where(leaves[index] == 0, index - 1, index)
    return index


def test_tree_queries_and_lower_bound_match_the_extension_or_reference():
    leaves = (torch.rand(STORED, generator=torch.Generator().manual_seed(1)) * 3).float()
    sum_tree, min_tree = SumTree(CAPACITY), MinTree(CAPACITY)
    sum_tree[torch.arange(STORED)], min_tree[torch.arange(STORED)] = leaves, leaves
    cumulative = torch.cumsum(leaves.double(), 0)
    # masses on exact prefix sums (ties) and random ones, past the total too
    mass = torch.cat([cumulative[::37].float(), torch.rand(500, generator=torch.Generator().manual_seed(2)) * 360])
    if EXTENSION_LOADS:
        ext_sum = torchrl_prioritized.SumSegmentTreeFp32(CAPACITY)
        ext_min = torchrl_prioritized.MinSegmentTreeFp32(CAPACITY)
        ext_sum[torch.arange(STORED)], ext_min[torch.arange(STORED)] = leaves, leaves
        assert torch.equal(sum_tree.scan_lower_bound(mass), torch.as_tensor(ext_sum.scan_lower_bound(mass)))
        for start, end in [(0, STORED), (0, CAPACITY), (3, 517), (255, 256), (100, 900)]:
            assert sum_tree.query(start, end).item() == ext_sum.query(start, end)
            assert min_tree.query(start, end).item() == ext_min.query(start, end)
    else:
        # float32 sums against float64 ones: ties may land one row off, other masses on the same row
        expected = np.minimum(np.searchsorted(cumulative.numpy(), mass.double().numpy(), side="left"), CAPACITY)
        drawn = sum_tree.scan_lower_bound(mass).numpy()
        ties = len(cumulative[::37])
        assert np.abs(drawn[:ties] - expected[:ties]).max() <= 1
        assert (drawn[ties:] == expected[ties:]).mean() > 0.99
        assert sum_tree.query(3, 517).item() == pytest.approx(leaves[3:517].double().sum().item(), rel=1e-6)
        assert min_tree.query(100, 900).item() == leaves[100:900].min().item()
    assert sum_tree.query(0, STORED).item() == pytest.approx(cumulative[-1].item(), rel=1e-6)


def test_repeated_rows_keep_their_last_priority():
    tree = SumTree(8)
    tree[torch.tensor([3, 5, 3, 3])] = torch.tensor([1.0, 2.0, 4.0, 8.0])
    assert tree[torch.tensor([3, 5])].tolist() == [8.0, 2.0]
    assert tree.query(0, 8).item() == 10.0


def test_probabilities_weights_and_draws_match_torchrl():
    raw = priorities()
    ours = TreePrioritizedSampler(CAPACITY, ALPHA, BETA, EPS)
    ours.update_priority(torch.arange(STORED), raw)
    storage = filled_storage(STORED)
    set_sampler_generator(ours, torch.Generator().manual_seed(7))
    index, info = ours.sample(storage, 4096)
    leaves = ours._sum_tree[torch.arange(STORED)]
    if EXTENSION_LOADS:
        stock = PrioritizedSampler(CAPACITY, alpha=ALPHA, beta=BETA, eps=EPS)
        stock.update_priority(torch.arange(STORED), raw)
        set_sampler_generator(stock, torch.Generator().manual_seed(7))
        stock_index, stock_info = stock.sample(storage, 4096)
        stock_leaves = torch.as_tensor(stock._sum_tree[torch.arange(STORED)])
        torch.testing.assert_close(leaves / leaves.sum(), stock_leaves / stock_leaves.sum(), rtol=0, atol=1e-6)
        assert torch.equal(index, torch.as_tensor(stock_index))
        torch.testing.assert_close(info["priority_weight"], torch.as_tensor(stock_info["priority_weight"]),
                                   rtol=1e-6, atol=1e-6)
    else:
        expected_leaves = ((raw.double() + EPS) ** ALPHA).numpy()
        np.testing.assert_allclose((leaves / leaves.sum()).numpy(), expected_leaves / expected_leaves.sum(), atol=1e-6)
        mass = torch.rand(4096, generator=torch.Generator().manual_seed(7)).double().numpy() * expected_leaves.sum()
        assert (index.numpy() == reference_draws(expected_leaves, mass)).mean() > 0.999  # float32 vs float64 ties
        p_min = expected_leaves[expected_leaves > 0].min()
        np.testing.assert_allclose(info["priority_weight"].numpy(), (expected_leaves[index.numpy()] / p_min) ** -BETA,
                                   rtol=1e-6)
    assert (raw[index] > 0).all()  # final-observation rows are never drawn


def test_prioritized_replay_resumes_bit_identically():
    """A replay reloaded from its saved state draws, weighs and updates exactly as the original."""
    replay = PrioritizedReplay(64, 2, 1, n_step=3, discount=0.99, alpha=ALPHA, priority_eps=EPS, batch_size=16,
                               beta_start=0.4, beta_end=1.0, windows=False)
    for traj in range(6):
        store(replay, episode([1.0] * 9, True, traj))
    replay.generator = torch.Generator().manual_seed(3)
    first = replay.sample(0.2)
    replay.update_priority(first["rl", "index"], torch.rand(16, generator=torch.Generator().manual_seed(4)))
    saved = io.BytesIO()
    torch.save({"replay": replay.state_dict(), "generator": replay.generator.get_state()}, saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=False)
    resumed = PrioritizedReplay(64, 2, 1, n_step=3, discount=0.99, alpha=ALPHA, priority_eps=EPS, batch_size=16,
                                beta_start=0.4, beta_end=1.0, windows=False)
    resumed.load_state_dict(state["replay"])
    resumed.generator = torch.Generator()
    resumed.generator.set_state(state["generator"])
    for progress in (0.3, 0.6):
        a, b = replay.sample(progress), resumed.sample(progress)
        assert (a == b).all()
        new = torch.rand(16, generator=torch.Generator().manual_seed(int(progress * 10)))
        replay.update_priority(a["rl", "index"], new)
        resumed.update_priority(b["rl", "index"], new)
    assert torch.equal(replay.sampler._sum_tree.values, resumed.sampler._sum_tree.values)
    assert torch.equal(replay.sampler._min_tree.values, resumed.sampler._min_tree.values)
