"""Atari-100k: data-efficient Rainbow (C51) + MLR (the official ``Atari/`` code, SPR on rlpyt) on a
prioritized n-step replay, with the human-normalised score as an evaluation metric."""

from __future__ import annotations

from typing import Callable

from omegaconf import DictConfig, OmegaConf

from mlr_lightning.agents.rainbow_mlr import RainbowMLRAgent
from mlr_lightning.config import AtariExperimentConfig, new_priority, validate_atari
from mlr_lightning.data.prioritized import PrioritizedReplay
from mlr_lightning.envs.atari import check_game, make_atari_env
from mlr_lightning.reporting.reference_scores import ATARI_REFERENCE, human_normalized_score
from mlr_lightning.training.callbacks import PriorityUpdate


class AtariDomain:
    name = "atari"
    schema = AtariExperimentConfig
    agent_name = "rainbow"
    agent_class = RainbowMLRAgent

    def validate(self, cfg: DictConfig) -> None:
        validate_atari(cfg)

    def check_task(self, cfg: DictConfig) -> None:
        check_game(cfg.env.task)

    def make_env(self, cfg: DictConfig, seed: int, train: bool = True):
        e = cfg.env
        return make_atari_env(e.task, e.frame_skip, e.image_size, e.frame_stack, e.noop_max, e.repeat_action_probability,
                              e.max_episode_frames, train, seed, e.terminal_on_life_loss, e.clip_rewards,
                              max_steps=None if train else cfg.eval.max_steps, resize=e.resize)

    def make_agent(self, cfg: DictConfig, env) -> RainbowMLRAgent:
        return RainbowMLRAgent(OmegaConf.to_container(cfg, resolve=True), num_actions=env.action_spec.shape[-1])

    def make_replay(self, cfg: DictConfig) -> PrioritizedReplay:
        r, mlr = cfg.replay, cfg.mlr
        return PrioritizedReplay(r.capacity, cfg.env.frame_stack, mlr.seq_len if mlr.enabled else 1,
                                 cfg.rainbow.n_step, cfg.rainbow.discount, r.alpha, r.priority_eps,
                                 cfg.train.batch_size, r.beta_start, r.beta_end, windows=mlr.enabled,
                                 new_priority=new_priority(r.new_priority),
                                 official_nstep_bootstrap=cfg.rainbow.official_nstep_bootstrap)

    def env_steps_per_agent_step(self, cfg: DictConfig) -> int:
        return 1  # the x-axis counts agent steps, each frame_skip emulator frames

    def eval_metrics(self, cfg: DictConfig) -> Callable[[list[float]], dict] | None:
        game = cfg.env.task
        if game not in ATARI_REFERENCE:
            return None
        return lambda returns: {"eval/hns": human_normalized_score(game, sum(returns) / len(returns))}

    def callbacks(self, cfg: DictConfig, replay: PrioritizedReplay) -> list:
        return [PriorityUpdate(replay)]  # before the snapshot, which holds the priorities


ATARI = AtariDomain()
