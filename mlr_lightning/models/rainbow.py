"""Networks of data-efficient Rainbow as in SPR/MLR (official ``Atari/src/models.py``).

- :class:`AtariEncoder`: Nature-DQN conv stack, no padding, 4x84x84 -> 64x7x7 (3136), then SPR's
  per-sample min-max "renormalize" over (C, H, W).
- :class:`DuelingC51Head`: dueling distributional head with noisy linear layers; the gradient into
  the head is scaled by ``grad_scale`` (2^-1/2 in SPR).

Noise comes from TorchRL's ``NoisyLinear``, which adds noise only under the RANDOM exploration type
(collection and updates) and uses the mean weights under DETERMINISTIC (evaluation).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchrl.modules import NoisyLinear


class AtariEncoder(nn.Module):
    """uint8 or float pixel units [N, C, 84, 84] -> conv map [N, 64, 7, 7] (renormalised)."""

    def __init__(self, in_channels: int, channels: Sequence[int], kernels: Sequence[int], strides: Sequence[int],
                 renormalize: bool, renormalize_eps: float):
        super().__init__()
        layers: list[nn.Module] = []
        for out_channels, kernel, stride in zip(channels, kernels, strides):
            layers += [nn.Conv2d(in_channels, out_channels, kernel, stride), nn.ReLU()]
            in_channels = out_channels
        self.convs = nn.Sequential(*layers)
        self.renormalize, self.renormalize_eps = renormalize, renormalize_eps

    def output_shape(self, image_size: int) -> tuple[int, int, int]:
        with torch.no_grad():
            return tuple(self.convs(torch.zeros(1, self.convs[0].in_channels, image_size, image_size)).shape[1:])

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.convs(pixels.float() / 255.0)
        return renormalize(x, self.renormalize_eps) if self.renormalize else x


def renormalize(x: Tensor, eps: float) -> Tensor:
    """SPR's min-max normalisation of each sample over all its non-batch dims, into [0, 1]."""
    flat = x.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(eps)).view_as(x)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


def scale_grad(x: Tensor, scale: float) -> Tensor:
    """Identity forward; the backward multiplies the gradient by ``scale``."""
    return _ScaleGrad.apply(x, scale)


class DuelingC51Head(nn.Module):
    """Flat latent [N, D] -> atom logits [N, A, num_atoms].

    Q-distribution logits = V(s) + A(s, a) - mean_a A(s, a), per atom (SPR's
    ``DQNDistributionalDuelingHeadModel``; the advantage output has its own bias and, in addition, a
    shared per-atom bias).
    """

    def __init__(self, input_dim: int, num_actions: int, num_atoms: int, hidden_dim: int, noisy_std: float,
                 grad_scale: float, dueling: bool = True):
        super().__init__()
        self.num_actions, self.num_atoms, self.grad_scale, self.dueling = num_actions, num_atoms, grad_scale, dueling
        self.advantage_hidden = NoisyLinear(input_dim, hidden_dim, std_init=noisy_std)
        self.advantage_out = NoisyLinear(hidden_dim, num_actions * num_atoms, std_init=noisy_std)
        self.advantage_bias = nn.Parameter(torch.zeros(num_atoms))
        if dueling:
            self.value_hidden = NoisyLinear(input_dim, hidden_dim, std_init=noisy_std)
            self.value_out = NoisyLinear(hidden_dim, num_atoms, std_init=noisy_std)

    def forward(self, latent: Tensor) -> Tensor:
        x = scale_grad(latent, self.grad_scale)
        advantage = self.advantage_out(F.relu(self.advantage_hidden(x)))
        advantage = advantage.view(-1, self.num_actions, self.num_atoms) + self.advantage_bias
        if not self.dueling:
            return advantage
        value = self.value_out(F.relu(self.value_hidden(x))).view(-1, 1, self.num_atoms)
        return value + advantage - advantage.mean(dim=1, keepdim=True)

    def reset_noise(self) -> None:
        for module in self.modules():
            if isinstance(module, NoisyLinear):
                module.reset_noise()


class RainbowNetwork(nn.Module):
    """Pixels [N, S, 84, 84] -> atom logits [N, A, num_atoms]; ``latent`` gives the flat conv map [N, 3136]."""

    def __init__(self, encoder: AtariEncoder, head: DuelingC51Head):
        super().__init__()
        self.encoder, self.head = encoder, head

    def latent(self, pixels: Tensor) -> Tensor:
        return self.encoder(pixels).flatten(1)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.head(self.latent(pixels))
