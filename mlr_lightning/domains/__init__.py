"""Domains: everything that differs between DeepMind Control and Atari-100k, behind one interface.

The experiment (:mod:`mlr_lightning.training.experiment`) looks the domain up once, by the config's
``domain`` key, and calls only these members; no other module branches on the domain. A new domain
(say a gymnasium pixel task) is one new module implementing :class:`Domain`, registered in
:data:`DOMAINS`; see docs/design.md.
"""

from __future__ import annotations

from typing import Callable, Protocol

import lightning.pytorch as pl
from omegaconf import DictConfig
from torchrl.envs import EnvBase

from mlr_lightning.agents.base import RLAgent
from mlr_lightning.data.replay import Replay


class Domain(Protocol):
    name: str  # the config's ``domain`` value
    schema: type  # the config dataclass: every key with its paper default
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


def _registry() -> dict[str, Domain]:
    from mlr_lightning.domains.atari import ATARI
    from mlr_lightning.domains.dmc import DMC

    return {domain.name: domain for domain in (DMC, ATARI)}


DOMAINS: dict[str, Domain] = _registry()


def domain_of(cfg: DictConfig) -> Domain:
    return DOMAINS[cfg.domain]
