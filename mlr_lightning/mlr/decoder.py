"""MLR's decoders: the predictive latent decoder, a small bidirectional transformer over state and
action tokens (MLR paper, section 2.6), and the pixel decoder of the pixel-reconstruction ablation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_positions(max_len: int, dim: int) -> Tensor:
    """[max_len, dim]: sin on even dims, cos on odd dims, base 10000 (official ``PositionalEmbedding``)."""
    position = torch.arange(max_len, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div[: dim // 2])
    return table


class Attention(nn.Module):
    """timm/BEiT attention: qkv without bias, output projection with bias.

    Hand-written rather than ``nn.MultiheadAttention`` because that module cannot drop the qkv bias
    while keeping the output bias, which the official decoder has.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        # Full bidirectional attention, no mask; the softmax in fp32 under mixed precision (2K tokens: cheap).
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)); no dropout."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PredictiveLatentDecoder(nn.Module):
    """Reconstructs the latents of a masked window from its state tokens and action tokens.

    State and action tokens of step t share the sinusoidal embedding of t and are interleaved
    ``[s0, a0, s1, a1, ...]``; attention is bidirectional and unmasked, and only the outputs at the
    state positions are returned. There is no final LayerNorm. ``action_tokens=False`` (the paper's
    ``NoAction`` ablation) leaves the state tokens and their positions only.
    """

    def __init__(self, dim: int, action_dim: int, num_layers: int, num_heads: int, mlp_ratio: float, max_len: int,
                 action_tokens: bool = True):
        super().__init__()
        self.action_tokens = action_tokens
        if action_tokens:
            self.action_embedding = nn.Linear(action_dim, dim)
        self.register_buffer("positions", sinusoidal_positions(max_len, dim), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(num_layers))

    def forward(self, states: Tensor, actions: Tensor) -> Tensor:
        """states [B, K, D], actions [B, K, A] -> reconstructed states [B, K, D]."""
        b, k, d = states.shape
        pos = self.positions[:k]  # [K, D]
        if not self.action_tokens:
            tokens = states + pos
            for block in self.blocks:
                tokens = block(tokens)
            return tokens
        tokens = torch.stack([states + pos, self.action_embedding(actions) + pos], dim=2).view(b, 2 * k, d)
        for block in self.blocks:
            tokens = block(tokens)
        return tokens.view(b, k, 2, d)[:, :, 0]


class PixelDecoder(nn.Module):
    """The pixel-reconstruction ablation's decoder: transformer state outputs [N, D] -> pixels [N, C, S, S].

    Linear to a 32-channel map of side ceil(S / 8), three 4x4 transposed convolutions of stride 2
    (ReLU between), then a bilinear resize to S where 8 * side overshoots it.
    """

    def __init__(self, dim: int, channels: int, size: int, hidden: int = 32):
        super().__init__()
        self.size, self.hidden, self.side = size, hidden, math.ceil(size / 8)
        self.fc = nn.Linear(dim, hidden * self.side * self.side)
        self.deconvs = nn.Sequential(
            nn.ReLU(), nn.ConvTranspose2d(hidden, hidden, 4, 2, 1),
            nn.ReLU(), nn.ConvTranspose2d(hidden, hidden, 4, 2, 1),
            nn.ReLU(), nn.ConvTranspose2d(hidden, channels, 4, 2, 1),
        )

    def forward(self, states: Tensor) -> Tensor:
        pixels = self.deconvs(self.fc(states).view(-1, self.hidden, self.side, self.side))
        if pixels.shape[-1] != self.size:
            pixels = F.interpolate(pixels, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return pixels
