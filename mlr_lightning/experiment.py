"""Assembles one experiment from a validated config: environments, agent, data, Trainer.

Thin on purpose: every piece is built by a small ``make_*`` function, and Lightning runs the loop.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from omegaconf import DictConfig, OmegaConf
from tensordict.nn import TensorDictModule
from torch.utils.data import DataLoader

from mlr_lightning.agents.sac_mlr import SACMLRAgent
from mlr_lightning.callbacks import PeriodicEvaluation, RunArtifacts, UpdateCheckpoint
from mlr_lightning.config import to_yaml
from mlr_lightning.data.replay import FrameReplay
from mlr_lightning.data.stream import ExperienceStream, make_collector
from mlr_lightning.envs.dmc import make_dmc_env, split_task
from mlr_lightning.tracking import make_loggers


def make_env(cfg: DictConfig, seed: int):
    e = cfg.env
    return make_dmc_env(e.task, e.action_repeat, e.image_size, e.camera_id, e.frame_stack, e.fast_render, seed)


def make_run_dir(cfg: DictConfig) -> Path:
    name = cfg.run_name or "-".join(
        [cfg.env.task, "mlr" if cfg.mlr.enabled else "baseline", f"s{cfg.seed}", time.strftime("%Y%m%d-%H%M%S")]
    )
    run_dir = Path(cfg.output_dir).resolve() / name
    if not cfg.run_name:  # never mix two runs started in the same second
        suffix = 1
        while run_dir.exists():
            suffix += 1
            run_dir = run_dir.with_name(f"{name}-{suffix}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    return run_dir


def _as_is(batch):
    """Batches are ready-made TensorDicts; torch's default_convert would try to index them as dicts."""
    return batch


class ExperienceDataModule(pl.LightningDataModule):
    """Builds the collector once Lightning has placed the agent on its device (one per rank)."""

    def __init__(self, cfg: DictConfig, env):
        super().__init__()
        self.cfg, self.env = cfg, env
        self.stream: ExperienceStream | None = None

    def train_dataloader(self) -> DataLoader:
        cfg, agent = self.cfg, self.trainer.lightning_module
        total_agent_steps = cfg.train.num_env_steps // cfg.env.action_repeat
        policy = TensorDictModule(agent.policy, in_keys=["pixels"], out_keys=["action"])
        collector = make_collector(self.env, policy, total_agent_steps, cfg.train.init_steps, agent.device)
        replay = FrameReplay(cfg.replay.capacity, cfg.env.frame_stack, cfg.mlr.seq_len)
        self.stream = ExperienceStream(
            collector,
            replay,
            total_agent_steps=total_agent_steps,
            init_steps=cfg.train.init_steps,
            action_repeat=cfg.env.action_repeat,
            batch_size=cfg.train.batch_size,
            window_batch_size=cfg.mlr.batch_size if cfg.mlr.enabled else None,
        )
        # batch_size=None: the stream yields ready batches; num_workers=0: the collector shares the
        # live policy weights with the agent, so it must run in this process.
        return DataLoader(self.stream, batch_size=None, num_workers=0, collate_fn=_as_is)

    def state_dict(self) -> dict:
        return asdict(self.stream.counters) if self.stream is not None else {}

    def teardown(self, stage: str) -> None:
        if self.stream is not None:
            self.stream.collector.shutdown()


def fit(cfg: DictConfig) -> Path:
    """Train one agent as configured; returns the run directory."""
    if cfg.get("domain", "dmc") == "atari":
        from mlr_lightning.atari_experiment import fit_atari
        from mlr_lightning.envs.atari import check_game

        check_game(cfg.env.task)  # fails on an unknown game before anything is built
        run_dir = make_run_dir(cfg)
        fit_atari(cfg, run_dir)
        return run_dir
    split_task(cfg.env.task)  # fails on an unknown task before anything is built
    run_dir = make_run_dir(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    env = make_env(cfg, cfg.seed)
    eval_env = make_env(cfg, cfg.seed + cfg.eval.seed_offset)
    agent = SACMLRAgent(OmegaConf.to_container(cfg, resolve=True), action_dim=env.action_spec.shape[-1])
    evaluation = PeriodicEvaluation(eval_env, cfg.eval.every_env_steps, cfg.eval.num_episodes, cfg.train.num_env_steps)
    checkpoint = UpdateCheckpoint(run_dir / "checkpoints", cfg.trainer.checkpoint_every_updates)
    trainer = pl.Trainer(
        default_root_dir=run_dir,
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        precision=cfg.trainer.precision,
        max_epochs=1,
        logger=make_loggers(cfg, run_dir),
        log_every_n_steps=cfg.trainer.log_every_updates,
        enable_checkpointing=False,  # UpdateCheckpoint below counts agent updates, not optimizer steps
        callbacks=[
            TQDMProgressBar(refresh_rate=cfg.trainer.log_every_updates),
            evaluation,
            checkpoint,
            RunArtifacts(run_dir, evaluation, checkpoint, cfg.tracking.video, cfg.tracking.max_checkpoint_artifact_mb),
        ],
    )
    trainer.fit(agent, datamodule=ExperienceDataModule(cfg, env))
    return run_dir
