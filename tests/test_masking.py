"""Cube masking: exact counts, constant over temporal blocks, shared over batch and channels."""

import pytest
import torch

from mlr_lightning.mlr.masking import apply_mask, cube_mask, feature_mask, window_mask

K, IMAGE, PATCH, BLOCK, RATIO = 16, 100, 10, 8, 0.5  # the paper's DMC values


def patch_grid(mask, patch):
    """[..., H, W] pixel mask -> [..., H/patch, W/patch] patch mask (asserting patches are uniform)."""
    *lead, h, w = mask.shape
    cells = mask.reshape(*lead, h // patch, patch, w // patch, patch)
    assert (cells.all(dim=(-3, -1)) == cells.any(dim=(-3, -1))).all(), "a patch is partly masked"
    return cells.any(dim=(-3, -1))


@pytest.mark.parametrize("block", [4, 8])
def test_each_block_masks_exactly_int_ratio_patches_and_is_constant_over_the_block(block):
    mask = cube_mask(K, IMAGE, PATCH, block, RATIO)
    assert mask.shape == (K, 1, IMAGE, IMAGE) and mask.dtype == torch.bool
    grid = patch_grid(mask[:, 0], PATCH)  # [K, 10, 10]
    assert (grid.flatten(1).sum(1) == int(RATIO * 100)).all()
    for start in range(0, K, block):
        assert (grid[start : start + block] == grid[start]).all(), "mask changes inside a temporal block"
    # Blocks draw fresh patterns: over a few draws, consecutive blocks differ.
    assert any(
        not torch.equal(m[0], m[block]) for m in (cube_mask(K, IMAGE, PATCH, block, RATIO) for _ in range(5))
    )


def test_atari_grid_masks_int_of_ratio_times_49():
    grid = patch_grid(cube_mask(16, 84, 12, 8, 0.5)[:, 0], 12)
    assert (grid.flatten(1).sum(1) == 24).all()


def test_default_mask_is_shared_over_batch_and_channels():
    frames = torch.full((5, K, 9, IMAGE, IMAGE), 200, dtype=torch.uint8)  # [B, K, C, H, W]
    mask = cube_mask(K, IMAGE, PATCH, BLOCK, RATIO)
    masked = apply_mask(frames, mask)
    zeros = masked == 0
    assert (zeros == zeros[:1]).all(), "samples of a batch got different masks"
    assert (zeros == zeros[:, :, :1]).all(), "stacked channels got different masks"
    assert zeros[0, :, 0].equal(mask[:, 0])
    assert (masked[~zeros] == 200).all()


def test_per_sample_masks_differ_across_the_batch():
    mask = cube_mask(K, IMAGE, PATCH, BLOCK, RATIO, batch_size=4)
    assert mask.shape == (4, K, 1, IMAGE, IMAGE)
    assert not all(torch.equal(mask[0], mask[i]) for i in range(1, 4))
    assert (patch_grid(mask[:, :, 0], PATCH).flatten(2).sum(-1) == 50).all()


def test_sequence_not_divisible_by_block_is_rejected():
    with pytest.raises(ValueError, match="not divisible"):
        cube_mask(10, IMAGE, PATCH, 8, RATIO)


# ------------------------------------------------------------------ the ablations' masking strategies
def test_spatial_masks_int_ratio_patches_per_frame_with_a_fresh_pattern_per_frame():
    mask = window_mask("spatial", K, IMAGE, PATCH, BLOCK, RATIO)
    grid = patch_grid(mask[:, 0], PATCH)  # [K, 10, 10]
    assert (grid.flatten(1).sum(1) == 50).all()
    assert len({tuple(g.flatten().tolist()) for g in grid}) > K // 2, "frames share their patterns"


def test_tube_masks_one_pattern_for_the_whole_window():
    mask = window_mask("tube", K, IMAGE, PATCH, BLOCK, RATIO, batch_size=3)
    grid = patch_grid(mask[:, :, 0], PATCH)  # [3, K, 10, 10]
    assert (grid.flatten(2).sum(-1) == 50).all()
    assert (grid == grid[:, :1]).all(), "the pattern changes inside the window"
    assert not torch.equal(grid[0], grid[1]), "per-sample tubes are the same"


@pytest.mark.parametrize("ratio, frames", [(0.5, 8), (0.25, 4), (0.1, 1)])
def test_temporal_masks_int_ratio_k_whole_frames_and_nothing_else(ratio, frames):
    mask = window_mask("temporal", K, IMAGE, PATCH, BLOCK, ratio, batch_size=4)
    assert mask.shape == (4, K, 1, IMAGE, IMAGE)
    per_frame = mask.flatten(2).float().mean(-1)  # [4, K]: fraction of each frame masked
    assert ((per_frame == 0) | (per_frame == 1)).all(), "a frame is partly masked"
    assert (per_frame.sum(1) == frames).all()
    assert not torch.equal(per_frame[0], per_frame[1]) or not torch.equal(per_frame[0], per_frame[2])


def test_cube_strategy_is_the_cube_mask_draw_for_draw():
    a = window_mask("cube", K, IMAGE, PATCH, BLOCK, RATIO, generator=torch.Generator().manual_seed(3))
    b = cube_mask(K, IMAGE, PATCH, BLOCK, RATIO, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_feature_mask_is_the_pixel_mask_on_the_conv_grid():
    mask = cube_mask(K, IMAGE, PATCH, BLOCK, RATIO)  # 10 x 10 patches
    cells = feature_mask(mask, batch_size=2, map_size=10)
    assert cells.shape == (2 * K, 1, 10, 10)
    assert torch.equal(cells[:K, 0], patch_grid(mask[:, 0], PATCH)) and torch.equal(cells[K:], cells[:K])
