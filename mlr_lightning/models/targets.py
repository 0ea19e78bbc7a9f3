"""Target networks that follow their online networks by a moving average."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- tau * online + (1 - tau) * target, in fp32 whatever the autocast state."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.lerp_(o.detach(), tau)
