"""Masks over a K-step window (MLR section 2.4, and the paper's masking ablations).

``mlr.mask_strategy`` chooses the pattern; every strategy masks exactly the counts stated below:

- ``cube`` (the paper): a cube is ``block_size`` frames x ``patch_size`` x ``patch_size`` pixels.
  Each temporal block draws a fresh set of exactly ``int(ratio * num_patches)`` patches; the same
  spatial pattern covers every frame of the block and every stacked channel.
- ``spatial``: a cube of one frame: a fresh pattern of ``int(ratio * num_patches)`` patches per frame.
- ``tube``: a cube of the whole window: one pattern of ``int(ratio * num_patches)`` patches for all K frames.
- ``temporal``: ``int(ratio * K)`` whole frames of the window are masked; the cube geometry is ignored.

Pixel-space masking is applied to the raw uint8 frames *before* augmentation, so the random crop
shifts the cube grid per sample. Feature-space masking (:func:`feature_mask`) resizes the same mask
to the encoder's last conv map instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


def frame_mask(
    seq_len: int,
    image_size: int,
    ratio: float,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Temporal-only mask: exactly ``int(ratio * seq_len)`` whole frames per window, drawn at random.
    ``[K, 1, H, W]`` or ``[B, K, 1, H, W]`` as :func:`cube_mask`."""
    n = 1 if batch_size is None else batch_size
    order = torch.rand(n, seq_len, device=device, generator=generator).argsort(dim=-1)
    frames = torch.zeros(n, seq_len, dtype=torch.bool, device=device)
    frames.scatter_(-1, order[:, : int(ratio * seq_len)], True)
    mask = frames[:, :, None, None, None].expand(n, seq_len, 1, image_size, image_size)
    return mask[0] if batch_size is None else mask


def window_mask(strategy: str, seq_len: int, image_size: int, patch_size: int, block_size: int, ratio: float,
                batch_size: int | None = None, device: torch.device | str | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """The mask of ``strategy`` (cube, spatial, temporal or tube), shaped as :func:`cube_mask`'s."""
    if strategy == "temporal":
        return frame_mask(seq_len, image_size, ratio, batch_size, device, generator)
    block = {"cube": block_size, "spatial": 1, "tube": seq_len}[strategy]
    return cube_mask(seq_len, image_size, patch_size, block, ratio, batch_size, device, generator)


def apply_mask(frames: Tensor, mask: Tensor) -> Tensor:
    """Zero the masked pixels of ``frames`` [B, K, C, H, W] (any dtype); ``mask`` broadcasts over B and C."""
    return frames.masked_fill(mask, 0)


def feature_mask(mask: Tensor, batch_size: int, map_size: int) -> Tensor:
    """A pixel mask [(B,) K, 1, H, W] resized (nearest) to a conv map's grid: [B*K, 1, map, map].

    The map is taken to cover the whole frame, so a crop's few pixels of offset are ignored.
    """
    mask = mask.expand(batch_size, *mask.shape[-4:]) if mask.dim() == 4 else mask
    return F.interpolate(mask.flatten(0, 1).float(), size=(map_size, map_size), mode="nearest") > 0.5
