"""SAC actor and twin-Q critic over the pixel encoder (official CURL/MLR ``Actor`` and ``Critic``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mlr_lightning.models.encoder import PixelEncoder


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim)
    )


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy. Its encoder's convs are tied to the critic's and detached."""

    def __init__(self, encoder: PixelEncoder, action_dim: int, hidden_dim: int, log_std_min: float, log_std_max: float):
        super().__init__()
        self.encoder = encoder
        self.trunk = mlp(encoder.feature_dim, hidden_dim, 2 * action_dim)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, obs: Tensor, detach_conv: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """obs uint8 [B, C, H, W] -> (mean action, sampled action, log-prob of the sample [B, 1])."""
        # The distribution is computed in fp32 under mixed precision (log-probs of a squashed Gaussian).
        mu, log_std = self.trunk(self.encoder(obs, detach_conv=detach_conv)).float().chunk(2, dim=-1)
        # Squash log_std into [log_std_min, log_std_max] (official code, not a clamp).
        log_std = torch.tanh(log_std)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (log_std + 1)
        noise = torch.randn_like(mu)
        pi = mu + noise * log_std.exp()
        log_pi = (-0.5 * noise.pow(2) - log_std).sum(-1, keepdim=True) - 0.5 * math.log(2 * math.pi) * mu.shape[-1]
        # tanh change of variables
        mu, pi = torch.tanh(mu), torch.tanh(pi)
        log_pi = log_pi - torch.log(torch.relu(1 - pi.pow(2)) + 1e-6).sum(-1, keepdim=True)
        return mu, pi, log_pi


class Critic(nn.Module):
    """Twin Q heads on a shared encoder; the critic owns the encoder that MLR trains."""

    def __init__(self, encoder: PixelEncoder, action_dim: int, hidden_dim: int):
        super().__init__()
        self.encoder = encoder
        self.q1 = mlp(encoder.feature_dim + action_dim, hidden_dim, 1)
        self.q2 = mlp(encoder.feature_dim + action_dim, hidden_dim, 1)

    def forward(self, obs: Tensor, action: Tensor, detach_conv: bool = False) -> tuple[Tensor, Tensor]:
        h = torch.cat([self.encoder(obs, detach_conv=detach_conv), action], dim=-1)
        return self.q1(h).float(), self.q2(h).float()  # [B, 1] each, fp32 under mixed precision
