"""Image augmentations, drawn independently for every image (kornia's ``same_on_batch=False``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_crop(images: Tensor, size: int, every_window: bool = True) -> Tensor:
    """[N, C, H, W] -> [N, C, size, size], one uniformly random window per image (CURL/RAD crop).

    ``every_window=False`` leaves out the last row and column of offsets (0..H-size-1), as the
    official SAC sampler's ``np.random.randint(0, H - size)`` does.
    """
    n, _, h, w = images.shape
    last = 1 if every_window else 0
    top = torch.randint(0, h - size + last, (n,), device=images.device)
    left = torch.randint(0, w - size + last, (n,), device=images.device)
    offsets = torch.arange(size, device=images.device)
    rows = (top[:, None] + offsets)[:, :, None]  # [N, size, 1]
    cols = (left[:, None] + offsets)[:, None, :]  # [N, 1, size]
    batch = torch.arange(n, device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def center_crop(images: Tensor, size: int) -> Tensor:
    """[..., H, W] -> [..., size, size], the window used for acting and evaluation."""
    h, w = images.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top : top + size, left : left + size]


def random_shift(images: Tensor, pad: int) -> Tensor:
    """Replicate-pad by ``pad`` then random-crop back to the input size: a shift of up to +-pad px."""
    size = images.shape[-1]
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode="replicate")
    return random_crop(padded, size)


def random_intensity(images: Tensor, scale: float) -> Tensor:
    """Multiply each float image by 1 + scale * clip(N(0, 1), -2, 2)."""
    noise = torch.randn(images.shape[0], 1, 1, 1, device=images.device).clamp_(-2.0, 2.0)
    return images * (1.0 + scale * noise)
