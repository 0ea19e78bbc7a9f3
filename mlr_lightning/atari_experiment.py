"""Assembles one Atari-100k experiment (``domain: atari``): environments, Rainbow+MLR agent,
prioritized replay and stream, Trainer. ``experiment.fit`` dispatches here; the run directory,
loggers, evaluation, checkpoint and artifact callbacks are the DMC ones.
"""

from __future__ import annotations

from dataclasses import asdict

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from omegaconf import DictConfig, OmegaConf
from tensordict.nn import TensorDictModule
from torch.utils.data import DataLoader

from mlr_lightning.agents.rainbow_mlr import RainbowMLRAgent
from mlr_lightning.callbacks import PeriodicEvaluation, RunArtifacts, UpdateCheckpoint
from mlr_lightning.data.prioritized import PrioritizedFrameReplay
from mlr_lightning.data.prioritized_stream import PrioritizedExperienceStream, PriorityUpdate
from mlr_lightning.data.stream import make_collector
from mlr_lightning.envs.atari import check_game, make_atari_env
from mlr_lightning.paper import ATARI_REFERENCE, human_normalized_score
from mlr_lightning.tracking import make_loggers


def make_env(cfg: DictConfig, seed: int, train: bool):
    e = cfg.env
    return make_atari_env(e.task, e.frame_skip, e.image_size, e.frame_stack, e.noop_max, e.repeat_action_probability,
                          e.max_episode_frames, train, seed, e.terminal_on_life_loss, e.clip_rewards,
                          max_steps=None if train else cfg.eval.max_steps, resize=e.resize)


def make_replay(cfg: DictConfig) -> PrioritizedFrameReplay:
    r = cfg.replay
    return PrioritizedFrameReplay(r.capacity, cfg.env.frame_stack, cfg.mlr.seq_len if cfg.mlr.enabled else 1,
                                  cfg.rainbow.n_step, cfg.rainbow.discount, r.alpha, r.priority_eps)


def _as_is(batch):
    return batch


class AtariDataModule(pl.LightningDataModule):
    """Builds the collector once Lightning has placed the agent on its device."""

    def __init__(self, cfg: DictConfig, env, replay: PrioritizedFrameReplay):
        super().__init__()
        self.cfg, self.env, self.replay = cfg, env, replay
        self.stream: PrioritizedExperienceStream | None = None

    def train_dataloader(self) -> DataLoader:
        cfg, agent = self.cfg, self.trainer.lightning_module
        total = cfg.train.num_env_steps
        policy = TensorDictModule(agent.policy, in_keys=["pixels"], out_keys=["action"])
        collector = make_collector(self.env, policy, total, cfg.train.init_steps, agent.device)
        self.stream = PrioritizedExperienceStream(
            collector, self.replay, total, cfg.train.init_steps, cfg.train.batch_size, cfg.train.updates_per_step,
            cfg.replay.beta_start, cfg.replay.beta_end, windows=cfg.mlr.enabled,
        )
        return DataLoader(self.stream, batch_size=None, num_workers=0, collate_fn=_as_is)

    def state_dict(self) -> dict:
        return asdict(self.stream.counters) if self.stream is not None else {}

    def teardown(self, stage: str) -> None:
        if self.stream is not None:
            self.stream.collector.shutdown()


def hns_metrics(game: str):
    """Evaluation metrics added to the raw return: the human-normalised score of the mean."""
    if game not in ATARI_REFERENCE:
        return None
    return lambda returns: {"eval/hns": human_normalized_score(game, sum(returns) / len(returns))}


def fit_atari(cfg: DictConfig, run_dir) -> None:
    check_game(cfg.env.task)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    env = make_env(cfg, cfg.seed, train=True)
    eval_env = make_env(cfg, cfg.seed + cfg.eval.seed_offset, train=False)
    agent = RainbowMLRAgent(OmegaConf.to_container(cfg, resolve=True), num_actions=env.action_spec.shape[-1])
    replay = make_replay(cfg)
    evaluation = PeriodicEvaluation(eval_env, cfg.eval.every_env_steps or None, cfg.eval.num_episodes,
                                    cfg.train.num_env_steps, extra_metrics=hns_metrics(cfg.env.task))
    checkpoint = UpdateCheckpoint(run_dir / "checkpoints", cfg.trainer.checkpoint_every_updates)
    trainer = pl.Trainer(
        default_root_dir=run_dir,
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        precision=cfg.trainer.precision,
        max_epochs=1,
        logger=make_loggers(cfg, run_dir),
        log_every_n_steps=cfg.trainer.log_every_updates,
        enable_checkpointing=False,
        callbacks=[
            TQDMProgressBar(refresh_rate=cfg.trainer.log_every_updates),
            PriorityUpdate(replay),
            evaluation,
            checkpoint,
            RunArtifacts(run_dir, evaluation, checkpoint, cfg.tracking.video, cfg.tracking.max_checkpoint_artifact_mb),
        ],
    )
    trainer.fit(agent, datamodule=AtariDataModule(cfg, env, replay))
