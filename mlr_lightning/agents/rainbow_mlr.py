"""Data-efficient Rainbow (C51) + MLR for Atari-100k (official ``Atari/`` code: SPR on rlpyt), as a
LightningModule.

One ``training_step`` is one gradient update on one prioritized batch (two per environment step):
  1. ``q_loss``   -- C51 cross-entropy of the online distribution at (s_t, a_t) against the
                     categorical projection of r^(n) + gamma^n z onto the support, the next action
                     chosen by the online network (double Q) and evaluated by the target network;
                     weighted by the replay's importance weights. Its per-sample KL divergence is the
                     new priority of the sampled start rows.
  2. ``mlr_loss`` -- mask cubes over the K-step window starting at the same rows, augment, encode,
                     decode with the actions, project through the Q head's first layers, predict, and
                     regress onto the (copied) target encoder/projection of the unmasked window;
                     weighted by the same importance weights (skipped when ``mlr.enabled=false``).
Both losses are summed (``mlr.weight``) and stepped by one Adam, as the official ``optimize_agent``;
each returns its metrics dict. Gradient norms are clipped separately for the stem (conv + Q head)
and the transformer. After the step the target network follows the online one (a copy by default).

Noise: the online and target heads draw fresh factorised noise before every update (officially the
online head draws and the target copies the online's previous draw with its weights: both are draws
independent of the online's current one); the acting
policy uses the online head's current noise under TorchRL's RANDOM exploration type (collection),
and the mean weights with epsilon-greedy ``eval_epsilon`` otherwise (evaluation).
"""

from __future__ import annotations

import copy
import functools
import math

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tensordict import TensorDict, TensorDictBase
from torch import Tensor, nn
from torchrl import timeit
from torchrl.envs.utils import ExplorationType, exploration_type, set_exploration_type

from mlr_lightning.agents.base import RLAgent
from mlr_lightning.data.augment import random_intensity, random_shift
from mlr_lightning.mlr.decoder import PixelDecoder, PredictiveLatentDecoder
from mlr_lightning.mlr.objective import MLRObjective, MLRParts, ql1_projection
from mlr_lightning.models.rainbow import AtariEncoder, DuelingC51Head, RainbowNetwork
from mlr_lightning.models.weights import soft_update


def categorical_projection(next_probs: Tensor, returns: Tensor, discount: Tensor, support: Tensor) -> Tensor:
    """Projects the distribution of ``returns + discount * Z'`` onto ``support`` (C51, rlpyt's form).

    next_probs [B, Z] (probabilities of Z' on ``support``), returns [B], discount [B] (gamma^n, 0 after
    a termination), support [Z] evenly spaced -> [B, Z]. Each shifted atom, clipped to the support's
    range, splits its mass between its two neighbouring atoms in proportion to closeness:
    target[b, i] = sum_j clamp(1 - |Tz_bj - z_i| / dz, 0, 1) * next_probs[b, j].
    Runs on whatever device its inputs are on.
    """
    v_min, v_max = support[0], support[-1]
    delta = (v_max - v_min) / (support.numel() - 1)
    shifted = (returns[:, None] + discount[:, None] * support[None, :]).clamp(v_min, v_max)  # [B, Z]
    weights = (1.0 - (shifted[:, None, :] - support[None, :, None]).abs() / delta).clamp(0.0, 1.0)  # [B, Z_i, Z_j]
    return torch.einsum("bij,bj->bi", weights, next_probs)


class RainbowPolicy(nn.Module):
    """Stacked frames uint8 [S, 84, 84] or [N, S, 84, 84] -> one-hot greedy action [(N,) A].

    RANDOM exploration type (the collector's): noisy weights, greedy. Otherwise (evaluation): mean
    weights, and a uniformly random action with probability ``eval_epsilon``.
    """

    def __init__(self, network: RainbowNetwork, support: Tensor, eval_epsilon: float):
        super().__init__()
        self.network, self.eval_epsilon = network, eval_epsilon
        self.register_buffer("support", support, persistent=False)

    def forward(self, pixels: Tensor, eval_noise: Tensor | None = None) -> Tensor:
        """``eval_noise`` ``[(N,) 2]`` uniform in [0, 1): the evaluation's draws per row (explore?, which
        action), from each episode's own generator, so that a row's action does not depend on the
        other rows of the batch; without it they come from torch's generator."""
        unbatched = pixels.dim() == 3
        obs = pixels[None] if unbatched else pixels
        q = q_values(self.network(obs), self.support)  # [N, A]
        action = q.argmax(-1)
        if exploration_type() not in (ExplorationType.RANDOM, None):
            num_actions = q.shape[-1]
            if eval_noise is None:
                eval_noise = torch.rand(*action.shape, 2, device=action.device)
            noise = eval_noise.reshape(*action.shape, 2).to(action.device)
            uniform_action = (noise[..., 1] * num_actions).long().clamp(max=num_actions - 1)
            action = torch.where(noise[..., 0] < self.eval_epsilon, uniform_action, action)
        one_hot = F.one_hot(action, q.shape[-1])
        return one_hot[0] if unbatched else one_hot


def q_values(logits: Tensor, support: Tensor) -> Tensor:
    """Atom logits [N, A, Z] -> expected values [N, A]."""
    return (logits.float().softmax(-1) * support).sum(-1)


class RainbowMLRAgent(RLAgent):
    optimizer_names = ("adam",)
    progress_bar_metrics = ("train/q_loss", "train/mlr_loss")

    def __init__(self, cfg: DictConfig | dict, num_actions: int):
        super().__init__(cfg, num_actions=num_actions)
        cfg = self.cfg
        self.rainbow, self.mlr = cfg.rainbow, cfg.mlr
        rb = self.rainbow
        encoder = AtariEncoder(cfg.env.frame_stack, rb.conv_channels, rb.conv_kernels, rb.conv_strides,
                               rb.renormalize, rb.renormalize_eps)
        self.map_shape = encoder.output_shape(cfg.env.image_size)  # (64, 7, 7)
        self.latent_dim = math.prod(self.map_shape)  # 3136
        head = DuelingC51Head(self.latent_dim, num_actions, rb.num_atoms, rb.hidden_dim, rb.noisy_std,
                              rb.head_grad_scale, rb.dueling)
        self.online = RainbowNetwork(encoder, head)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.register_buffer("support", torch.linspace(rb.v_min, rb.v_max, rb.num_atoms))
        if self.mlr.enabled:
            self._build_mlr(num_actions)

    def _build_mlr(self, num_actions: int) -> None:
        mlr, rb = self.mlr, self.rainbow
        dim = mlr.decoder_dim or self.latent_dim
        # PyTorch default init throughout, as the official Atari code (no truncated-normal re-init).
        self.decoder = PredictiveLatentDecoder(dim, num_actions, mlr.num_attn_layers, mlr.num_heads, mlr.mlp_ratio,
                                               mlr.max_seq_positions, mlr.action_tokens)
        narrow = dim != self.latent_dim  # optional narrower transformer: linear maps in and out
        self.decoder_in = nn.Linear(self.latent_dim, dim) if narrow else nn.Identity()
        self.decoder_out = nn.Linear(dim, self.latent_dim) if narrow else nn.Identity()
        projection_dim = rb.hidden_dim * (2 if rb.dueling else 1)  # 512
        self.prediction = nn.Linear(projection_dim, projection_dim)
        self.target_encoder = copy.deepcopy(self.online.encoder).requires_grad_(False)
        self.target_head = copy.deepcopy(self.online.head).requires_grad_(False)  # holds the target projection
        if mlr.target == "pixel":  # the pixel-reconstruction ablation: its decoder reconstructs the frames
            self.pixel_decoder = PixelDecoder(self.latent_dim, self.cfg.env.frame_stack, self.cfg.env.image_size)

    @property
    def objective(self) -> MLRObjective:
        """The MLR objective over this agent's parts: the online conv encoder, its copy, the Q head's
        first layers as the projection, and the shift + intensity augmentation."""
        mlr = self.mlr
        return MLRObjective(mlr, self.cfg.env.image_size, MLRParts(
            encoder=self.online.encoder, target_encoder=self.target_encoder, decoder=self.decoder,
            project=functools.partial(ql1_projection, self.online.head),
            target_project=functools.partial(ql1_projection, self.target_head),
            prediction=self.prediction, augment=self.augment,
            target_pairs=[(self.target_encoder, self.online.encoder), (self.target_head, self.online.head)],
            decoder_in=self.decoder_in, decoder_out=self.decoder_out, pixel_decoder=getattr(self, "pixel_decoder", None),
            # official_input_scaling: the masked branch reaches the encoder in [0, 255]; official_mask_keep:
            # the drawn patches stay visible.
            input_scale=255.0 if mlr.official_input_scaling else 1.0, keep_drawn=mlr.official_mask_keep))

    def transformer_networks(self) -> list[nn.Module]:
        """The MLR networks clipped together (official: the transformer; the pixel ablation's decoder with it)."""
        return [self.decoder.blocks, self.decoder_in, self.decoder_out] + (
            [self.pixel_decoder] if self.mlr.target == "pixel" else [])

    @property
    def policy(self) -> RainbowPolicy:
        """The acting policy over the live online network (not a submodule: checkpoints hold it once)."""
        return RainbowPolicy(self.online, self.support, self.rainbow.eval_epsilon)

    # ------------------------------------------------------------------------------ optimiser
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return self.adam(params, lr=self.rainbow.lr, eps=self.rainbow.adam_eps)

    def compiled_networks(self) -> list[nn.Module]:
        networks = [self.online, self.target]
        if self.mlr.enabled:  # the MLR loss calls the online encoder on its own
            networks += [self.online.encoder, self.target_encoder, self.decoder, self.decoder_in, self.decoder_out,
                         self.prediction] + ([self.pixel_decoder] if self.mlr.target == "pixel" else [])
        return networks

    def apply_optimizer_settings(self) -> None:
        for group in self.optimizer("adam").optimizer.param_groups:
            group["lr"], group["eps"] = self.rainbow.lr, self.rainbow.adam_eps

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """Parameter groups whose gradient norms are clipped separately: the stem (conv + Q head) and
        the transformer; the predictor and the action embedding are not clipped (official)."""
        groups = [list(self.online.parameters())]
        if self.mlr.enabled:
            groups.append([p for m in self.transformer_networks() for p in m.parameters()])
        return groups

    # ---------------------------------------------------------------------------------- update
    def training_step(self, batch: TensorDictBase, batch_idx: int) -> dict:
        sample: TensorDict = batch["rl"]  # [B], see data/prioritized.py
        self.online.head.reset_noise()
        self.target.head.reset_noise()
        with set_exploration_type(ExplorationType.RANDOM):  # noisy layers sample their noise
            with timeit("update/q_loss"):
                q_loss, priority, metrics = self.q_loss(sample)
            loss = q_loss
            if self.mlr.enabled:
                with timeit("update/mlr_loss"):
                    mlr_value, mlr_metrics = self.compute_mlr_loss(batch["mlr", "pixels"], batch["mlr", "action"], sample["weight"])
                loss = loss + self.mlr.weight * mlr_value
                metrics |= mlr_metrics
        with timeit("update/step"):
            self.step(self.optimizer("adam"), loss)
        norms = self._grad_norms
        metrics |= {"train/loss": loss.detach(), "train/grad_norm_stem": norms[0]}
        if len(norms) > 1:
            metrics["train/grad_norm_transformer"] = norms[1]
        self.finish_update(metrics)
        if self.updates % self.rainbow.target_update_interval == 0:
            soft_update(self.target, self.online, self.rainbow.target_update_tau)
        # Read by the PriorityUpdate callback, which writes them into the replay.
        return {"index": sample["index"], "priority": priority}

    def on_before_optimizer_step(self, optimizer) -> None:
        """Lightning calls this after unscaling the gradients under 16-mixed: clip the true norms."""
        self._grad_norms = [torch.nn.utils.clip_grad_norm_(group, self.rainbow.grad_clip) for group in self.clip_groups()]

    def augment(self, pixels: Tensor) -> Tensor:
        """uint8 [N, C, H, W] -> float [N, C, H, W] in pixel units: +-shift_pad px shift, then intensity."""
        return random_intensity(random_shift(pixels, self.rainbow.shift_pad), self.rainbow.intensity_scale)

    def q_loss(self, sample: TensorDict) -> tuple[Tensor, Tensor, dict]:
        """Importance-weighted C51 loss, the new priorities [B] (KL) and metrics."""
        rb, support = self.rainbow, self.support
        action = sample["action"].argmax(-1)  # one-hot [B, A] -> [B]
        batch = torch.arange(action.numel(), device=action.device)
        logits = self.online(self.augment(sample["pixels"]))  # [B, A, Z]
        log_p = logits[batch, action].float().log_softmax(-1)  # [B, Z]
        with torch.no_grad():
            target_in = self.augment(sample["next_pixels"]) if rb.target_augmentation else sample["next_pixels"].float()
            target_probs = self.target(target_in).float().softmax(-1)  # [B, A, Z]
            if rb.double_q:
                online_in = self.augment(sample["next_pixels"]) if rb.target_augmentation else target_in
                next_action = q_values(self.online(online_in), support).argmax(-1)
            else:
                next_action = (target_probs * support).sum(-1).argmax(-1)
            target_p = categorical_projection(target_probs[batch, next_action], sample["return"], sample["discount"], support)
        cross_entropy = -(target_p * log_p).sum(-1)  # [B]
        loss = (cross_entropy * sample["weight"]).mean()
        with torch.no_grad():
            eps = self.cfg.replay.kl_clamp  # rlpyt's NaN guard: clamp the target, then the KL
            clamped = target_p.clamp(eps, 1.0)
            kl = (clamped * (clamped.log() - log_p)).sum(-1).clamp(eps, 1.0 / eps)
            q = (log_p.exp() * support).sum(-1)
        metrics = {"train/q_loss": loss.detach(), "train/q": q.mean(), "train/kl": kl.mean(),
                   "train/is_weight": sample["weight"].mean()}
        return loss, kl, metrics

    def compute_mlr_loss(self, frames: Tensor, actions: Tensor, weight: Tensor) -> tuple[Tensor, dict]:
        """frames uint8 [B, K, S, H, W], actions one-hot [B, K, A], weight [B] -> the weighted loss.

        Mean over the K positions of the loss per position (by default 2 - 2 cos(prediction, target))
        per sequence, times its importance weight, then mean over the batch (official ``mlr_loss * is_weights``).
        """
        objective = self.objective
        per_sequence = objective.loss(frames, actions).mean(1)  # [B]
        # Official order: the momentum update closes the forward pass, after the targets, so with
        # tau = 1 the targets come from the online weights of the previous update (one step behind).
        objective.update_targets(self.mlr.momentum_tau)
        loss = (per_sequence * weight).mean()
        return loss, {"train/mlr_loss": loss.detach()}
