"""SAC + MLR for DeepMind Control from pixels (official ``MTMSacAgent``), as a LightningModule.

One ``training_step`` is one agent update, in the official order:
  1. ``update_critic``    -- twin-Q TD loss on randomly cropped transitions, bootstrapping through
                             time limits;
  2. ``update_mlr``       -- the MLR objective (``mlr/objective.py``) on a window of K steps: mask,
                             augment, encode, decode with actions, regress onto the momentum targets
                             (skipped entirely when ``mlr.enabled=false``: Baseline);
  3. ``update_actor_and_alpha`` every ``actor_update_freq`` updates;
  4. ``update_targets``   every ``critic_target_update_freq`` updates (SAC targets and MLR targets).
Each update returns a metrics dict. Optimisation is manual because the four losses have their own
optimizers, as in the official code; Lightning still owns devices, precision and checkpoints.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tensordict import TensorDictBase
from torch import Tensor, nn
from torchrl import timeit
from torchrl.envs.utils import ExplorationType, exploration_type

from mlr_lightning.agents.base import RLAgent
from mlr_lightning.data.augment import center_crop, random_crop, random_intensity
from mlr_lightning.mlr.decoder import PixelDecoder, PredictiveLatentDecoder
from mlr_lightning.mlr.objective import MLRObjective, MLRParts, projection_mlp
from mlr_lightning.mlr.warmup import inverse_sqrt_schedule
from mlr_lightning.models.encoder import PixelEncoder
from mlr_lightning.models.sac import Actor, Critic
from mlr_lightning.models.weights import orthogonal_init, soft_update, truncated_normal_init

ADAM_BETA2 = 0.999  # the official configs set only beta1 (critic_beta, actor_beta, alpha_beta)


class SACPolicy(nn.Module):
    """Acting policy: centre-cropped stacked frames -> action. Samples under TorchRL's RANDOM
    exploration type (the collector's default) and returns the mean action otherwise (evaluation)."""

    def __init__(self, actor: Actor, crop_size: int):
        super().__init__()
        self.actor, self.crop_size = actor, crop_size

    def forward(self, pixels: Tensor, eval_noise: Tensor | None = None) -> Tensor:
        """``eval_noise``: unused (the mean action draws nothing); the evaluation's interface."""
        unbatched = pixels.dim() == 3
        obs = center_crop(pixels[None] if unbatched else pixels, self.crop_size)
        mu, pi, _ = self.actor(obs)
        action = pi if exploration_type() in (ExplorationType.RANDOM, None) else mu
        return action[0] if unbatched else action


def make_pixel_encoder(cfg: DictConfig) -> PixelEncoder:
    """The configured encoder of the stacked, cropped frames."""
    e = cfg.encoder
    return PixelEncoder(3 * cfg.env.frame_stack, cfg.env.crop_size, e.num_layers, e.num_filters, e.feature_dim)


class SACMLRAgent(RLAgent):
    optimizer_names = ("critic", "actor", "alpha", "mlr")
    progress_bar_metrics = ("train/critic_loss", "train/actor_loss", "train/mlr_loss")

    def __init__(self, cfg: DictConfig | dict, action_dim: int):
        super().__init__(cfg, action_dim=action_dim)
        cfg = self.cfg
        self.sac, self.mlr = cfg.sac, cfg.mlr
        self.critic = Critic(make_pixel_encoder(cfg), action_dim, self.sac.hidden_dim)
        self.actor = Actor(make_pixel_encoder(cfg), action_dim, self.sac.hidden_dim, self.sac.actor_log_std_min, self.sac.actor_log_std_max)
        self.critic.apply(orthogonal_init)
        self.actor.apply(orthogonal_init)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor.encoder.tie_conv_weights_to(self.critic.encoder)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(self.sac.init_temperature)))
        self.target_entropy = -float(action_dim)
        if self.mlr.enabled:
            self._build_mlr(action_dim)
        if cfg.encoder.get("freeze", False):  # pretraining evaluation: no optimiser sees the encoder
            self.critic.encoder.requires_grad_(False)
            self.actor.encoder.requires_grad_(False)

    @property
    def policy(self) -> SACPolicy:
        """The acting policy over the live actor (not a submodule, so checkpoints hold the actor once)."""
        return SACPolicy(self.actor, self.cfg.env.crop_size)

    def _build_mlr(self, action_dim: int) -> None:
        mlr, dim = self.mlr, self.cfg.encoder.feature_dim
        self.decoder = PredictiveLatentDecoder(dim, action_dim, mlr.num_attn_layers, mlr.num_heads, mlr.mlp_ratio,
                                               mlr.max_seq_positions, mlr.action_tokens)
        self.projection = projection_mlp(dim, mlr.latent_dim)
        self.prediction = projection_mlp(dim, mlr.latent_dim)
        online = [self.decoder, self.projection, self.prediction]
        if mlr.official_init:  # the official init also re-initialises the critic encoder's fc
            online.append(self.critic.encoder.fc)
        for module in online:
            module.apply(lambda m: truncated_normal_init(m, mlr.init_std))
        self.target_encoder = copy.deepcopy(self.critic.encoder).requires_grad_(False)
        self.target_projection = copy.deepcopy(self.projection).requires_grad_(False)
        if mlr.official_init:  # targets initialised independently of the online networks
            for module in (self.target_encoder.fc, self.target_projection):
                module.apply(lambda m: truncated_normal_init(m, mlr.init_std))
        if mlr.target == "pixel":  # the pixel-reconstruction ablation: its decoder reconstructs the crop
            self.pixel_decoder = PixelDecoder(dim, 3 * self.cfg.env.frame_stack, self.cfg.env.crop_size)
            self.pixel_decoder.apply(lambda m: truncated_normal_init(m, mlr.init_std))

    @property
    def objective(self) -> MLRObjective:
        """The MLR objective over this agent's parts: the critic's encoder (the one MLR trains), its
        momentum copy, the MLP heads and the crop + intensity augmentation."""
        return MLRObjective(self.mlr, self.cfg.env.image_size, MLRParts(
            encoder=self.critic.encoder, target_encoder=self.target_encoder, decoder=self.decoder,
            project=self.projection, target_project=self.target_projection, prediction=self.prediction,
            augment=self.augment_mlr, pixel_decoder=getattr(self, "pixel_decoder", None),
            target_pairs=[(self.target_encoder, self.critic.encoder), (self.target_projection, self.projection)]))

    def mlr_networks(self) -> list[nn.Module]:
        """The online networks of the MLR pass (the critic's encoder excepted)."""
        return [self.decoder, self.projection, self.prediction] + ([self.pixel_decoder] if self.mlr.target == "pixel" else [])

    # ------------------------------------------------------------------------------ optimisers
    def mlr_parameters(self) -> list[nn.Parameter]:
        """What the MLR loss trains: the critic's encoder, the decoder and the online heads."""
        return [p for m in [self.critic.encoder, *self.mlr_networks()] for p in m.parameters()]

    def configure_optimizers(self):
        sac = self.sac
        tied = {id(p) for p in self.critic.encoder.convs.parameters()}
        actor_params = [p for p in self.actor.parameters() if id(p) not in tied and p.requires_grad]  # convs get no actor gradient
        optimizers = [
            self.adam([p for p in self.critic.parameters() if p.requires_grad], lr=sac.critic_lr,
                      betas=(sac.critic_beta, ADAM_BETA2)),
            self.adam(actor_params, lr=sac.actor_lr, betas=(sac.actor_beta, ADAM_BETA2)),
            self.adam([self.log_alpha], lr=sac.alpha_lr, betas=(sac.alpha_beta, ADAM_BETA2)),
        ]
        if not self.mlr.enabled:
            return optimizers
        mlr_opt = self.adam(self.mlr_parameters(), lr=self.mlr.lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(mlr_opt, inverse_sqrt_schedule(self.mlr.warmup_steps, self.mlr.warmup_init_factor))
        return optimizers + [mlr_opt], [{"scheduler": schedule, "interval": "step"}]

    def compiled_networks(self) -> list[nn.Module]:
        networks = [self.critic, self.actor, self.critic_target]
        if self.mlr.enabled:  # the MLR loss calls the critic's encoder on its own
            networks += [self.critic.encoder, *self.mlr_networks(), self.target_encoder, self.target_projection]
        return networks

    def apply_optimizer_settings(self) -> None:
        sac = self.sac
        for name, lr, beta1 in (("critic", sac.critic_lr, sac.critic_beta), ("actor", sac.actor_lr, sac.actor_beta),
                                ("alpha", sac.alpha_lr, sac.alpha_beta)):
            for group in self.optimizer(name).optimizer.param_groups:
                group["lr"], group["betas"] = lr, (beta1, ADAM_BETA2)
        if self.mlr.enabled:
            schedule = self.lr_schedulers()  # LambdaLR: lr = base_lr * factor(updates)
            if schedule.base_lrs != [self.mlr.lr]:
                schedule.base_lrs = [self.mlr.lr]
                for group in schedule.optimizer.param_groups:
                    group["initial_lr"] = self.mlr.lr
                    group["lr"] = self.mlr.lr * schedule.lr_lambdas[0](schedule.last_epoch)

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.exp()

    # ---------------------------------------------------------------------------------- update
    def training_step(self, batch: TensorDictBase, batch_idx: int) -> None:
        t = batch["rl"]  # [B]: pixels, action, reward, terminated, next_pixels (see data/replay.py)
        crop = self.cfg.env.crop_size
        every_window = not self.sac.official_crop_range
        obs = random_crop(t["pixels"], crop, every_window)  # [B, 3S, 84, 84] uint8
        next_obs = random_crop(t["next_pixels"], crop, every_window)  # independent crop, as the official sampler
        with timeit("update/critic"):
            metrics = self.update_critic(obs, t["action"], t["reward"], next_obs, t["terminated"])
        if self.mlr.enabled:
            with timeit("update/mlr"):
                metrics |= self.update_mlr(batch["mlr", "pixels"], batch["mlr", "action"])
        step = self.updates
        if step % self.sac.actor_update_freq == 0:
            with timeit("update/actor"):
                metrics |= self.update_actor_and_alpha(obs)
        if step % self.sac.critic_target_update_freq == 0:
            self.update_targets()
        self.finish_update(metrics)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Clip the MLR gradients here: Lightning calls this after unscaling them under 16-mixed."""
        if self.mlr.enabled and optimizer is self.optimizer("mlr").optimizer:
            self.clip_gradients(optimizer, gradient_clip_val=self.mlr.grad_clip, gradient_clip_algorithm="norm")

    def update_critic(self, obs: Tensor, action: Tensor, reward: Tensor, next_obs: Tensor, terminated: Tensor) -> dict:
        target_q = self.td_target(reward, next_obs, terminated)
        q1, q2 = self.critic(obs, action)
        loss = F.mse_loss(q1.float(), target_q) + F.mse_loss(q2.float(), target_q)
        self.step(self.optimizer("critic"), loss)
        return {"train/critic_loss": loss.detach(), "train/q1": q1.detach().mean()}

    @torch.no_grad()
    def td_target(self, reward: Tensor, next_obs: Tensor, terminated: Tensor) -> Tensor:
        """r + gamma * (min target Q - alpha * log pi) [B, 1]; only true terminations stop the
        bootstrap, time-limit ends (truncation) do not (the official "infinite bootstrap")."""
        _, next_action, next_log_pi = self.actor(next_obs)
        target_q1, target_q2 = self.critic_target(next_obs, next_action)
        target_v = torch.min(target_q1, target_q2) - self.alpha.detach() * next_log_pi
        return (reward + (~terminated).float() * self.sac.discount * target_v).float()

    def update_actor_and_alpha(self, obs: Tensor) -> dict:
        _, pi, log_pi = self.actor(obs, detach_conv=True)
        q1, q2 = self.critic(obs, pi, detach_conv=True)
        actor_loss = (self.alpha.detach() * log_pi - torch.min(q1, q2)).float().mean()
        self.step(self.optimizer("actor"), actor_loss)
        alpha_loss = (self.alpha * (-log_pi - self.target_entropy).detach()).float().mean()
        self.step(self.optimizer("alpha"), alpha_loss)
        return {
            "train/actor_loss": actor_loss.detach(),
            "train/alpha_loss": alpha_loss.detach(),
            "train/alpha": self.alpha.detach(),
            "train/entropy": -log_pi.detach().mean(),
        }

    def update_mlr(self, frames: Tensor, actions: Tensor) -> dict:
        """frames uint8 [B, K, 3S, H, W] (uncropped), actions [B, K, A]."""
        loss = self.compute_mlr_loss(frames, actions)
        mlr_opt = self.optimizer("mlr")
        self.step(mlr_opt, loss)
        self.lr_schedulers().step()
        return {"train/mlr_loss": loss.detach(), "train/mlr_lr": torch.tensor(mlr_opt.param_groups[0]["lr"])}

    def compute_mlr_loss(self, frames: Tensor, actions: Tensor) -> Tensor:
        """frames uint8 [B, K, 3S, H, W] (uncropped), actions [B, K, A] -> the mean loss over all B x K
        positions (by default 2 - 2 cos(prediction, target))."""
        return self.objective.loss(frames, actions).mean()

    def augment_mlr(self, frames: Tensor) -> Tensor:
        """uint8 [N, C, H, W] -> float [N, C, crop, crop] in pixel units (the encoder divides by 255)."""
        return random_intensity(random_crop(frames, self.cfg.env.crop_size).float(), self.mlr.intensity_scale)

    @torch.no_grad()
    def update_targets(self) -> None:
        sac = self.sac
        soft_update(self.critic_target.q1, self.critic.q1, sac.critic_tau)
        soft_update(self.critic_target.q2, self.critic.q2, sac.critic_tau)
        soft_update(self.critic_target.encoder, self.critic.encoder, sac.encoder_tau)
        if self.mlr.enabled:
            self.objective.update_targets(self.mlr.momentum_tau)
