"""MLR's objective: normalised-L2 regression of predicted onto target latents (MLR paper, section 2.7)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def mlr_loss(prediction: Tensor, target: Tensor, eps: float) -> Tensor:
    """Per-position ``2 - 2 cos(prediction, target)`` [...], via normalised L2 as in the official code."""
    prediction = F.normalize(prediction.float(), dim=-1, eps=eps)
    target = F.normalize(target.float(), dim=-1, eps=eps)
    return (prediction - target).pow(2).sum(dim=-1)
