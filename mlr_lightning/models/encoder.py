"""CURL-style pixel encoder used by the SAC actor, critic and MLR (official ``PixelEncoder``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PixelEncoder(nn.Module):
    """uint8 ``[N, C, H, W]`` -> ``[N, feature_dim]``.

    Conv 3x3/2 then ``num_layers - 1`` conv 3x3/1 (ReLU, no padding), Linear, LayerNorm. No tanh:
    the official code builds it with ``output_logits=True``. Pixels are scaled by 1/255 here, so
    everything outside the network keeps uint8.
    """

    def __init__(self, in_channels: int, image_size: int, num_layers: int, num_filters: int, feature_dim: int):
        super().__init__()
        convs = [nn.Conv2d(in_channels, num_filters, 3, stride=2)]
        convs += [nn.Conv2d(num_filters, num_filters, 3, stride=1) for _ in range(num_layers - 1)]
        self.convs = nn.ModuleList(convs)
        with torch.no_grad():
            flat_dim = self.forward_conv(torch.zeros(1, in_channels, image_size, image_size)).shape[-1]
        self.fc = nn.Linear(flat_dim, feature_dim)
        self.ln = nn.LayerNorm(feature_dim)
        self.feature_dim = feature_dim

    def forward_conv(self, obs: Tensor) -> Tensor:
        h = obs.float() / 255.0
        for conv in self.convs:
            h = torch.relu(conv(h))
        return h.flatten(1)  # [N, num_filters * S * S]

    def forward(self, obs: Tensor, detach_conv: bool = False) -> Tensor:
        h = self.forward_conv(obs)
        if detach_conv:
            h = h.detach()
        return self.ln(self.fc(h))

    def tie_conv_weights_to(self, source: "PixelEncoder") -> None:
        """Share ``source``'s conv parameters (the actor's convs are the critic's)."""
        for mine, theirs in zip(self.convs, source.convs):
            mine.weight, mine.bias = theirs.weight, theirs.bias
