"""Pretraining evaluation: a new SAC agent starts from another run's trained encoder (``encoder.init_from``).

The encoder is the critic's pixel encoder, the one MLR trains. It is copied into the new agent's critic
encoder, its target critic's encoder and the actor's encoder (convolutions are shared with the critic; the
actor's fc and LayerNorm take the critic's too, so that both read the same representation). With
``encoder.freeze`` the agent then keeps it fixed (:class:`~mlr_lightning.agents.sac_mlr.SACMLRAgent`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from mlr_lightning.config import ConfigError

ENCODER_PREFIX = "critic.encoder."


def run_checkpoint(run: str | Path) -> tuple[Path, str | None]:
    """A run directory (its ``checkpoints/last.ckpt``) or a checkpoint file -> (the checkpoint, None), or
    (the path, what is wrong with it)."""
    path = Path(run)
    checkpoint = path / "checkpoints" / "last.ckpt" if path.is_dir() else path
    if checkpoint.is_file():
        return checkpoint, None
    return path, "a directory without checkpoints/last.ckpt" if path.is_dir() else "not a file"


def encoder_checkpoint(source: str) -> Path:
    """``encoder.init_from``: a run directory or a checkpoint file."""
    checkpoint, problem = run_checkpoint(source)
    if problem:
        raise ConfigError(f"encoder.init_from ({source}) is {problem}: give a DMC run directory that fit wrote, "
                          "or its checkpoints/last.ckpt")
    return checkpoint


def read_encoder(source: str) -> tuple[dict, dict[str, Tensor]]:
    """(the source run's config, its critic encoder's weights without the prefix)."""
    checkpoint = encoder_checkpoint(source)
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        cfg, weights = state["hyper_parameters"]["cfg"], state["state_dict"]
    except Exception as err:  # not a Lightning checkpoint of this suite (a wrong file, a truncated one)
        raise ConfigError(f"encoder.init_from ({source}): {checkpoint} is not a checkpoint of a fit run "
                          f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    return cfg, {k.removeprefix(ENCODER_PREFIX): v for k, v in weights.items() if k.startswith(ENCODER_PREFIX)}


def check_encoder_source(cfg: DictConfig, encoder: nn.Module) -> None:
    """The source is a DMC run whose encoder has the shapes of ``encoder`` (this config's), else one ConfigError."""
    source_cfg, weights = read_encoder(cfg.encoder.init_from)
    domain = source_cfg.get("domain", "dmc")
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
def load_encoder(agent, source: str) -> None:
    """Copy the source run's critic encoder into ``agent``'s critic, target critic, actor (and MLR target) encoders."""
    _, weights = read_encoder(source)
    encoders = [agent.critic.encoder, agent.critic_target.encoder, agent.actor.encoder]
    if hasattr(agent, "target_encoder"):
        encoders.append(agent.target_encoder)
    for encoder in encoders:
        encoder.load_state_dict(weights)  # in place: the actor's convolutions stay the critic's tensors
