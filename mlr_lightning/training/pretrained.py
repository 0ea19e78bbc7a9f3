"""``encoder.init_from``: which checkpoint a run directory's trained encoder is in, checked before
anything is created and loaded into the new agent (:mod:`mlr_lightning.agents.pretrained` reads it)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mlr_lightning.agents.pretrained import check_encoder_source, load_encoder
from mlr_lightning.agents.sac_mlr import make_pixel_encoder
from mlr_lightning.config import ConfigError
from mlr_lightning.training.snapshot import model_checkpoint


def encoder_checkpoint(cfg: DictConfig) -> Path | None:
    """The checkpoint ``encoder.init_from`` names (a run directory or a checkpoint file); None if unset
    (or the domain's schema has no such key)."""
    source = OmegaConf.select(cfg, "encoder.init_from", default=None)
    if not source:
        return None
    checkpoint = model_checkpoint(source)
    if checkpoint is None:
        problem = "a directory without a checkpoint" if Path(source).is_dir() else "not a file"
        raise ConfigError(f"encoder.init_from ({source}) is {problem}: give a run directory that fit wrote, "
                          "or a checkpoint file of one")
    return checkpoint


def check_pretrained_encoder(cfg: DictConfig) -> None:
    """The source's domain and encoder shapes match this config's, else one ConfigError."""
    if (checkpoint := encoder_checkpoint(cfg)) is not None:
        check_encoder_source(cfg, make_pixel_encoder(cfg), checkpoint)


def load_pretrained_encoder(cfg: DictConfig, agent) -> None:
    """Load ``encoder.init_from``'s encoder into a new ``agent`` (a resume then restores its own snapshot over it)."""
    if (checkpoint := encoder_checkpoint(cfg)) is not None:
        load_encoder(agent, checkpoint, cfg.encoder.init_from)
