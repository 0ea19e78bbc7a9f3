"""How parameters are set: the official code's initialisations, and target networks that follow
their online networks by a moving average."""

from __future__ import annotations

import torch
from torch import nn


def orthogonal_init(module: nn.Module) -> None:
    """The official ``weight_init``: orthogonal Linear; delta-orthogonal conv (centre tap only)."""
    if isinstance(module, nn.Linear):
        nn.init.orthogonal_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.zeros_(module.weight)
        nn.init.zeros_(module.bias)
        mid = module.weight.shape[2] // 2
        nn.init.orthogonal_(module.weight[:, :, mid, mid], nn.init.calculate_gain("relu"))


def truncated_normal_init(module: nn.Module, std: float) -> None:
    """Official MLR init of every Linear: truncated normal at +-std, zero bias."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=std, a=-std, b=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@torch.no_grad()
def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- tau * online + (1 - tau) * target, in fp32 whatever the autocast state."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.lerp_(o.detach(), tau)
