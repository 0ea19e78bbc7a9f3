"""Spatio-temporal cube masking (MLR section 2.4).

A cube is ``block_size`` frames x ``patch_size`` x ``patch_size`` pixels. Each temporal block of
the K-step window draws a fresh set of exactly ``int(ratio * num_patches)`` patches; the same
spatial pattern then covers every frame of the block and every stacked channel. Masking is applied
to the raw uint8 frames *before* augmentation, so the random crop shifts the cube grid per sample.
"""

from __future__ import annotations

import torch
from torch import Tensor


def cube_mask(
    seq_len: int,
    image_size: int,
    patch_size: int,
    block_size: int,
    ratio: float,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Boolean mask, True where pixels are masked.

    Returns ``[K, 1, H, W]`` (one mask shared by the whole batch, the paper's default) or
    ``[B, K, 1, H, W]`` when ``batch_size`` is given (one mask per sequence).
    """
    if seq_len % block_size:
        raise ValueError(f"seq_len {seq_len} is not divisible by block_size {block_size}")
    if image_size % patch_size:
        raise ValueError(f"patch_size {patch_size} does not divide image_size {image_size}")
    grid = image_size // patch_size
    num_patches = grid * grid
    num_masked = int(ratio * num_patches)
    num_blocks = seq_len // block_size
    n = 1 if batch_size is None else batch_size

    # A random permutation per (sample, block): its first num_masked entries are the masked patches.
    order = torch.rand(n, num_blocks, num_patches, device=device, generator=generator).argsort(dim=-1)
    patches = torch.zeros(n, num_blocks, num_patches, dtype=torch.bool, device=device)
    patches.scatter_(-1, order[..., :num_masked], True)
    patches = patches.view(n, num_blocks, 1, grid, grid)
    pixels = patches.repeat_interleave(patch_size, dim=-2).repeat_interleave(patch_size, dim=-1)
    mask = pixels.repeat_interleave(block_size, dim=1)  # [n, K, 1, H, W]
    return mask[0] if batch_size is None else mask


def apply_mask(frames: Tensor, mask: Tensor) -> Tensor:
    """Zero the masked pixels of ``frames`` [B, K, C, H, W] (any dtype); ``mask`` broadcasts over B and C."""
    return frames.masked_fill(mask, 0)
