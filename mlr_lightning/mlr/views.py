"""The two views of a window that MLR compares: masked (online) and whole (target).

Masking comes *before* augmentation (MLR paper, section 2.4): the cube mask is applied to the raw
uint8 frames, then each view is augmented with its own draws per image, so a random crop or shift
moves the cube grid per sample. Both agents build their views here; only ``augment`` differs
(DMC: crop + intensity; Atari: shift + intensity).
"""

from __future__ import annotations

from typing import Callable

from omegaconf import DictConfig
from torch import Tensor

from mlr_lightning.mlr.masking import apply_mask, cube_mask


def masked_views(frames: Tensor, mlr: DictConfig, image_size: int, augment: Callable[[Tensor], Tensor],
                 keep_drawn: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """frames uint8 [B, K, C, H, W] -> (online view, target view) [B*K, C, h, w] and the mask.

    ``mlr`` gives the cube geometry (``patch_size``, ``block_size``, ``mask_ratio``,
    ``per_sample_mask``). ``keep_drawn`` inverts the mask: the drawn patches stay visible and the
    rest is zeroed (the official Atari code's rule).
    """
    b, k = frames.shape[:2]
    mask = cube_mask(k, image_size, mlr.patch_size, mlr.block_size, mlr.mask_ratio,
                     batch_size=b if mlr.per_sample_mask else None, device=frames.device)  # [(B,) K, 1, H, W]
    if keep_drawn:
        mask = ~mask
    online = augment(apply_mask(frames, mask).flatten(0, 1))
    target = augment(frames.flatten(0, 1))
    return online, target, mask
