"""Domains: everything that differs between DeepMind Control, Atari-100k and gymnasium pixel tasks,
behind one interface.

Each domain module owns its config schema, bounds and checks, its reference scores and x-axis unit, and
the factories of its environment, agent and replay. Code outside ``domains/`` asks the domain object
(:func:`domain_of`) and never branches on a domain's name. A new domain is one new module implementing
:class:`Domain` plus its line in :data:`DOMAINS`; see docs/design.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Callable, Protocol

import lightning.pytorch as pl
from omegaconf import DictConfig
from torchrl.envs import EnvBase

from mlr_lightning import config
from mlr_lightning.agents.base import RLAgent
from mlr_lightning.data.replay import Replay
from mlr_lightning.domains.atari import ATARI
from mlr_lightning.domains.dmc import DMC
from mlr_lightning.domains.gym_pixels import GYM_PIXELS


class Domain(Protocol):
    name: str  # the config's ``domain`` value
    schema: type  # the config dataclass (built on config.RunConfig): every key with its paper default
    bounds: Mapping[str, tuple]  # bounds of the keys only this schema has, as config.COMMON_BOUNDS
    optimizer_keys: Sequence[str]  # keys a resume may change with --allow-change
    frame_channels: int  # channels of one stored frame (RGB 3, grayscale 1)
    agent_name: str  # the RL algorithm, for run tags ("sac", "rainbow")
    agent_class: type[RLAgent]  # to load a trained agent from a checkpoint

    def validate(self, cfg: DictConfig) -> None:
        """Cross-field checks of a loaded config; raise ConfigError naming the key."""

    def check_task(self, cfg: DictConfig) -> None:
        """Fail on an unknown task, with the available ones, before anything is built."""

    def make_env(self, cfg: DictConfig, seed: int, train: bool = True) -> EnvBase:
        """A training (or evaluation, ``train=False``) environment whose ``pixels`` are uint8 stacks."""

    def make_agent(self, cfg: DictConfig, env: EnvBase) -> RLAgent: ...

    def make_replay(self, cfg: DictConfig) -> Replay: ...

    def env_steps_per_agent_step(self, cfg: DictConfig) -> int:
        """The x-axis unit: DMC counts physics steps (the action repeat), Atari counts agent steps."""

    def eval_metrics(self, cfg: DictConfig) -> Callable[[list[float]], dict] | None:
        """Evaluation returns -> metrics logged beside the raw return (Atari: the human-normalised score)."""

    def callbacks(self, cfg: DictConfig, replay: Replay) -> list[pl.Callback]:
        """Domain-specific callbacks, placed before the snapshot callback."""

    def normalized_score(self, task: str, score: float) -> float:
        """A return on a common [0, 1]-ish scale for aggregation (DMC: return / 1000, Atari: HNS)."""

    def paper_reference(self, task: str, algorithm: str, budget: int) -> str:
        """The paper's number as printed, or '' where the paper reports none."""


DOMAINS: dict[str, Domain] = {domain.name: domain for domain in (DMC, ATARI, GYM_PIXELS)}
DEFAULT_DOMAIN = DMC.name  # a config that names no domain


def domain_named(name: str | None) -> Domain:
    """The domain of a ``domain`` value (a run tag, a saved config); None is the default domain."""
    return DOMAINS[name or DEFAULT_DOMAIN]


def domain_of(cfg: DictConfig) -> Domain:
    return domain_named(cfg.get("domain"))


def load_config(paths: str | Path | Sequence[str | Path] | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """:func:`mlr_lightning.config.load_config` with the registered domains."""
    return config.load_config(DOMAINS, DEFAULT_DOMAIN, paths, overrides)
