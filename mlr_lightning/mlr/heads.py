"""MLR's projection and prediction heads (BYOL-style), per domain (MLR paper, section 2.2).

DMC: MLPs on the 50-d encoder feature. Atari: the projection is the Q head's first value and
advantage layers (so the MLR loss also trains them, as in SPR), followed by a linear predictor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlr_lightning.models.rainbow import DuelingC51Head


def projection_mlp(dim: int, hidden_dim: int) -> nn.Sequential:
    """Projection/prediction head of the DMC code: Linear -> ReLU -> Linear, back to ``dim``."""
    return nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, dim))


def ql1_projection(head: DuelingC51Head, latent: Tensor) -> Tensor:
    """MLR's Atari projection (``QL1Head``, ``--q-l1-type value advantage``): [N, D] -> [N, 2 * hidden].

    The head's first value and advantage layers with their mean weights (no noise) and no ReLU,
    concatenated. Called with the online head, the MLR loss trains those layers, as in SPR/MLR.
    """
    layers = [head.value_hidden, head.advantage_hidden] if head.dueling else [head.advantage_hidden]
    return torch.cat([F.linear(latent, layer.weight_mu, layer.bias_mu) for layer in layers], dim=-1)
