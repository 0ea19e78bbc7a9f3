"""Pretraining evaluation: a new SAC agent starts from another run's trained encoder (``encoder.init_from``).

The encoder is the critic's pixel encoder, the one MLR trains. It is copied into the new agent's critic
encoder, its target critic's encoder and the actor's encoder (convolutions are shared with the critic; the
actor's fc and LayerNorm take the critic's too, so that both read the same representation). With
``encoder.freeze`` the agent then keeps it fixed (:class:`~mlr_lightning.agents.sac_mlr.SACMLRAgent`).
Which file a run directory's weights are in is the training layer's business
(:mod:`mlr_lightning.training.pretrained`); this module reads a checkpoint file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from mlr_lightning.config import ConfigError

ENCODER_PREFIX = "critic.encoder."


def read_encoder(checkpoint: Path, source: str) -> tuple[dict, dict[str, Tensor]]:
    """(the source run's config, its critic encoder's weights without the prefix); ``source`` is what the
    user gave as ``encoder.init_from``, for the message."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        cfg, weights = state["hyper_parameters"]["cfg"], state["state_dict"]
    except Exception as err:  # not a Lightning checkpoint of this suite (a wrong file, a truncated one)
        raise ConfigError(f"encoder.init_from ({source}): {checkpoint} is not a checkpoint of a fit run "
                          f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    return cfg, {k.removeprefix(ENCODER_PREFIX): v for k, v in weights.items() if k.startswith(ENCODER_PREFIX)}


def check_encoder_source(cfg: DictConfig, encoder: nn.Module, checkpoint: Path) -> None:
    """The checkpoint is a run of this config's domain whose encoder has the shapes of ``encoder`` (this
    config's), else one ConfigError."""
    source_cfg, weights = read_encoder(checkpoint, cfg.encoder.init_from)
    domain = source_cfg.get("domain")
    if domain != cfg.domain or not weights:
        raise ConfigError(f"encoder.init_from ({cfg.encoder.init_from}) is a {domain} run; a {cfg.domain} agent's encoder "
                          f"must come from a {cfg.domain} run")
    mine = encoder.state_dict()
    wrong = [f"{k} {list(weights[k].shape) if k in weights else 'missing'} vs {list(v.shape)}"
             for k, v in mine.items() if k not in weights or weights[k].shape != v.shape]
    if wrong:
        raise ConfigError(f"encoder.init_from ({cfg.encoder.init_from}) has an encoder of another shape ({wrong[0]}): "
                          "give this run the source's encoder.*, env.frame_stack and env.crop_size")


@torch.no_grad()
def load_encoder(agent, checkpoint: Path, source: str) -> None:
    """Copy the checkpoint's critic encoder into ``agent``'s critic, target critic, actor (and MLR target) encoders."""
    _, weights = read_encoder(checkpoint, source)
    encoders = [agent.critic.encoder, agent.critic_target.encoder, agent.actor.encoder]
    if hasattr(agent, "target_encoder"):
        encoders.append(agent.target_encoder)
    for encoder in encoders:
        encoder.load_state_dict(weights)  # in place: the actor's convolutions stay the critic's tensors
