"""MLR's objective (MLR paper, sections 2.2-2.7) for any agent: masks, the two views, the decoder
pass, the heads, the targets and the loss.

An agent hands its parts over as :class:`MLRParts`: its online and target encoders, how its latents
are projected, its augmentation. :class:`MLRObjective` does the rest, the same way for SAC on DMC,
Rainbow on Atari and the latent analysis (``reporting/analysis.py``). Every ablation axis of the
paper is a switch of ``mlr`` (``mask_strategy``, ``mask_space``, ``target``, ``action_tokens``,
``target_encoder``, ``loss``; see docs/ablations.md); the defaults are the paper's objective.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from mlr_lightning.mlr.decoder import PredictiveLatentDecoder
from mlr_lightning.mlr.masking import apply_mask, feature_mask, window_mask
from mlr_lightning.models.rainbow import DuelingC51Head
from mlr_lightning.models.weights import soft_update

# ------------------------------------------------------------------------------------------ heads
def projection_mlp(dim: int, hidden_dim: int) -> nn.Sequential:
    """DMC's projection/prediction head: Linear -> ReLU -> Linear, back to ``dim`` (BYOL-style)."""
    return nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, dim))


def ql1_projection(head: DuelingC51Head, latent: Tensor) -> Tensor:
    """MLR's Atari projection (``QL1Head``, ``--q-l1-type value advantage``): [N, D] -> [N, 2 * hidden].

    The head's first value and advantage layers with their mean weights (no noise) and no ReLU,
    concatenated. Called with the online head, the MLR loss trains those layers, as in SPR/MLR.
    """
    layers = [head.value_hidden, head.advantage_hidden] if head.dueling else [head.advantage_hidden]
    return torch.cat([F.linear(latent, layer.weight_mu, layer.bias_mu) for layer in layers], dim=-1)


# ------------------------------------------------------------------------------------------- loss
def latent_loss(prediction: Tensor, target: Tensor, kind: str, eps: float) -> Tensor:
    """Per position [...] from [..., P]: ``cosine`` is 2 - 2 cos(prediction, target), via normalised
    L2 as in the official code (section 2.7); ``mse`` the mean squared error of the projections."""
    if kind == "mse":
        return F.mse_loss(prediction.float(), target.float(), reduction="none").mean(-1)
    prediction = F.normalize(prediction.float(), dim=-1, eps=eps)
    target = F.normalize(target.float(), dim=-1, eps=eps)
    return (prediction - target).pow(2).sum(dim=-1)


def pixel_loss(prediction: Tensor, target: Tensor, masked: Tensor) -> Tensor:
    """Mean squared error over the masked pixels of each image: prediction [N, C, h, w] in [0, 1]
    units, target [N, C, h, w] in pixel units, masked bool [N, 1, h, w] -> [N] (0 where nothing is masked)."""
    error = (prediction.float() - target.float() / 255.0).pow(2) * masked
    count = masked.expand_as(error).sum((1, 2, 3)).clamp_min(1)
    return error.sum((1, 2, 3)) / count


# -------------------------------------------------------------------------------------- objective
@dataclass
class MLRParts:
    """What an agent supplies. Encoders map pixels [N, C, h, w] to latents [N, ...] (flattened here);
    ``project``/``target_project`` map latents [N, D] to projections [N, P]; ``augment`` maps uint8
    frames [N, C, H, W] to float pixel units [N, C, h, w]; ``target_pairs`` are the (target, online)
    modules the momentum update moves."""

    encoder: nn.Module
    target_encoder: nn.Module
    decoder: PredictiveLatentDecoder
    project: Callable[[Tensor], Tensor]
    target_project: Callable[[Tensor], Tensor]
    prediction: nn.Module
    augment: Callable[[Tensor], Tensor]
    target_pairs: Sequence[tuple[nn.Module, nn.Module]]
    decoder_in: nn.Module = field(default_factory=nn.Identity)  # a narrower transformer's linear maps
    decoder_out: nn.Module = field(default_factory=nn.Identity)
    pixel_decoder: nn.Module | None = None  # mlr.target=pixel only
    input_scale: float = 1.0  # the online encoder's input is multiplied by it (Atari's official_input_scaling)
    keep_drawn: bool = False  # invert the mask: the drawn patches stay visible (Atari's official_mask_keep)


class MLRObjective:
    """The MLR loss of a window, and the pieces the latent analysis reuses (:meth:`predict`, :meth:`target`)."""

    def __init__(self, mlr: DictConfig, image_size: int, parts: MLRParts):
        self.mlr, self.image_size, self.parts = mlr, image_size, parts

    def mask(self, frames: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """frames [B, K, ...] -> bool mask [(B,) K, 1, H, W], True where masked (``mlr.mask_strategy``)."""
        mlr, (b, k) = self.mlr, frames.shape[:2]
        mask = window_mask(mlr.mask_strategy, k, self.image_size, mlr.patch_size, mlr.block_size, mlr.mask_ratio,
                           batch_size=b if mlr.per_sample_mask else None, device=frames.device, generator=generator)
        return ~mask if self.parts.keep_drawn else mask

    def masked_input(self, frames: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:
        """The online branch's frames [B, K, C, H, W] and the feature mask: pixel space zeroes the
        masked pixels (and no feature mask); feature space leaves the pixels and passes ``mask`` on."""
        if self.mlr.mask_space == "feature":
            return frames, mask
        return apply_mask(frames, mask), None

    def predict(self, online_in: Tensor, actions: Tensor, features_masked: Tensor | None = None) -> Tensor:
        """Online views [B, K, C, h, w], actions [B, K, A] -> predictions [B, K, P] (latent target)
        or reconstructed pixels [B, K, C, h, w] in [0, 1] units (pixel target)."""
        p, (b, k) = self.parts, online_in.shape[:2]
        x = online_in.flatten(0, 1)
        if p.input_scale != 1.0:
            x = x.float() * p.input_scale
        with self._features_masked(features_masked, b):
            states = p.encoder(x).flatten(1)  # [B*K, D]
        tokens = p.decoder_in(states).view(b, k, -1)
        reconstructed = p.decoder_out(p.decoder(tokens, actions.float())).reshape(b * k, -1)
        if self.mlr.target == "pixel":
            return p.pixel_decoder(reconstructed).unflatten(0, (b, k))
        return p.prediction(p.project(reconstructed)).view(b, k, -1)

    @torch.no_grad()
    def target(self, target_in: Tensor) -> Tensor:
        """Target views [B, K, C, h, w] -> target projections [B, K, P], by the momentum networks or,
        with ``mlr.target_encoder=online``, by the online ones (stop-gradient)."""
        p, (b, k) = self.parts, target_in.shape[:2]
        online = self.mlr.target_encoder == "online"
        encoder, project = (p.encoder, p.project) if online else (p.target_encoder, p.target_project)
        return project(encoder(target_in.flatten(0, 1)).flatten(1)).view(b, k, -1)

    def loss(self, frames: Tensor, actions: Tensor) -> Tensor:
        """frames uint8 [B, K, C, H, W], actions [B, K, A] -> loss per position [B, K].

        Masking comes before augmentation (section 2.4); each view gets its own augmentation draws
        per image, so a random crop or shift moves the cube grid per sample.
        """
        (b, k), augment = frames.shape[:2], self.parts.augment
        mask = self.mask(frames)
        online, features_masked = self.masked_input(frames, mask)
        if self.mlr.target == "pixel":
            return self._pixel_loss(frames, online, mask, actions, features_masked)
        online_in = augment(online.flatten(0, 1)).unflatten(0, (b, k))
        target_in = augment(frames.flatten(0, 1)).unflatten(0, (b, k))
        prediction = self.predict(online_in, actions, features_masked)
        target = self.target(target_in)
        return latent_loss(prediction, target, self.mlr.loss, self.mlr.normalize_eps).view(b, k)

    def _pixel_loss(self, frames: Tensor, online: Tensor, mask: Tensor, actions: Tensor,
                    features_masked: Tensor | None) -> Tensor:
        """Reconstruct the unmasked pixels at the masked positions: the online view, the whole frames
        and the mask are augmented together (one draw per image), so they stay aligned."""
        (b, k, c), size = frames.shape[:3], frames.shape[-1]
        marks = mask.expand(b, k, 1, size, size).to(frames.dtype)  # a shared mask gains the batch dim
        views = self.parts.augment(torch.cat([online, frames, marks * 255], dim=2).flatten(0, 1))
        online_in, target_in, masked = views[:, :c], views[:, c : 2 * c], views[:, 2 * c :] > 0
        prediction = self.predict(online_in.unflatten(0, (b, k)), actions, features_masked).flatten(0, 1)
        return pixel_loss(prediction, target_in, masked).view(b, k)

    @torch.no_grad()
    def update_targets(self, tau: float) -> None:
        """Move the momentum targets towards the online networks (nothing to move for an online target)."""
        if self.mlr.target_encoder == "online":
            return
        for target, online in self.parts.target_pairs:
            soft_update(target, online, tau)

    @contextlib.contextmanager
    def _features_masked(self, mask: Tensor | None, batch_size: int) -> Iterator[None]:
        """Zero the masked cells of the online encoder's last conv map while inside.

        A forward hook rather than an argument of the encoders: the encoders stay the agents' own
        networks, and only the MLR pass sees the mask (the RL losses call the same modules).
        """
        if mask is None:
            yield
            return

        def zero_masked_cells(module: nn.Module, args, output: Tensor) -> Tensor:
            return output.masked_fill(feature_mask(mask, batch_size, output.shape[-1]), 0)

        handle = self.parts.encoder.convs[-1].register_forward_hook(zero_masked_cells)
        try:
            yield
        finally:
            handle.remove()
