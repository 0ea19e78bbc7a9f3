"""The Atari-100k pieces that :mod:`mlr_lightning.experiment` assembles when ``domain: atari``:
environments, the Rainbow+MLR agent, the prioritized replay and stream, and the HNS metric. The run
directory, loggers, evaluation, snapshots, resume, DDP and precision are the shared ones.
"""

from __future__ import annotations

from typing import Callable

from omegaconf import DictConfig, OmegaConf

from mlr_lightning.agents.rainbow_mlr import RainbowMLRAgent
from mlr_lightning.data.prioritized import PrioritizedFrameReplay
from mlr_lightning.data.prioritized_stream import PrioritizedExperienceStream
from mlr_lightning.data.stream import CollectorFactory
from mlr_lightning.envs.atari import make_atari_env
from mlr_lightning.paper import ATARI_REFERENCE, human_normalized_score


def make_env(cfg: DictConfig, seed: int, train: bool):
    e = cfg.env
    return make_atari_env(e.task, e.frame_skip, e.image_size, e.frame_stack, e.noop_max, e.repeat_action_probability,
                          e.max_episode_frames, train, seed, e.terminal_on_life_loss, e.clip_rewards,
                          max_steps=None if train else cfg.eval.max_steps, resize=e.resize)


def make_agent(cfg: DictConfig, env) -> RainbowMLRAgent:
    return RainbowMLRAgent(OmegaConf.to_container(cfg, resolve=True), num_actions=env.action_spec.shape[-1])


def make_replay(cfg: DictConfig) -> PrioritizedFrameReplay:
    r = cfg.replay
    return PrioritizedFrameReplay(r.capacity, cfg.env.frame_stack, cfg.mlr.seq_len if cfg.mlr.enabled else 1,
                                  cfg.rainbow.n_step, cfg.rainbow.discount, r.alpha, r.priority_eps)


def make_stream(cfg: DictConfig, collector_from: CollectorFactory, replay: PrioritizedFrameReplay):
    return PrioritizedExperienceStream(
        collector_from, replay, cfg.train.num_env_steps, cfg.train.init_steps, cfg.train.batch_size,
        cfg.train.updates_per_step, cfg.replay.beta_start, cfg.replay.beta_end, windows=cfg.mlr.enabled,
        max_env_restarts=cfg.train.max_env_restarts,
    )


def hns_metrics(game: str) -> Callable[[list[float]], dict] | None:
    """Evaluation metrics added to the raw return: the human-normalised score of the mean."""
    if game not in ATARI_REFERENCE:
        return None
    return lambda returns: {"eval/hns": human_normalized_score(game, sum(returns) / len(returns))}
