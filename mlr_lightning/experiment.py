"""Assembles one experiment from a validated config: environments, agent, data, Trainer.

Thin on purpose: every piece is built by a small ``make_*`` function, and Lightning runs the loop.
A run can be resumed from a full-state snapshot (see :mod:`mlr_lightning.checkpointing`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from tensordict.nn import TensorDictModule
from torch.utils.data import DataLoader

from mlr_lightning.agents.numerics import NonFiniteLossError
from mlr_lightning.agents.sac_mlr import SACMLRAgent
from mlr_lightning.callbacks import GracefulInterrupt, PeriodicEvaluation, RunArtifacts, UpdateCheckpoint
from mlr_lightning.checkpointing import MODEL_FILE, CheckpointError, latest_snapshot, resolve_snapshot, save_torch
from mlr_lightning.config import ConfigError, config_differences, to_yaml
from mlr_lightning.data.replay import FrameReplay
from mlr_lightning.data.prioritized_stream import PriorityUpdate
from mlr_lightning.data.stream import ExperienceStream, make_collector
from mlr_lightning.envs.dmc import make_dmc_env, split_task
from mlr_lightning.tracking import make_loggers, remember_run

# Set by rank 0 for the ranks Lightning's DDP launcher starts: they re-run the same command and
# must join the same run directory and snapshot instead of creating their own.
RUN_DIR_ENV, SNAPSHOT_ENV = "MLR_LIGHTNING_RUN_DIR", "MLR_LIGHTNING_SNAPSHOT"


class RunInterrupted(Exception):
    """SIGTERM or Ctrl-C: a snapshot was saved and the run stopped cleanly."""

    def __init__(self, signal_name: str, run_dir: Path, env_steps: int):
        self.signal_name, self.run_dir, self.env_steps = signal_name, run_dir, env_steps
        super().__init__(f"{signal_name} at env step {env_steps}")


class RunFailed(Exception):
    """Training stopped on an error; names the last good snapshot."""


# ------------------------------------------------------------------ per-domain builders
# DMC (SAC + MLR) is built here; Atari (Rainbow + MLR) in mlr_lightning.atari_experiment.

def is_atari(cfg: DictConfig) -> bool:
    return cfg.domain == "atari"


def check_task(cfg: DictConfig) -> None:
    """Fails on an unknown task or game, with the available ones, before anything is built."""
    if is_atari(cfg):
        from mlr_lightning.envs.atari import check_game

        check_game(cfg.env.task)
    else:
        split_task(cfg.env.task)


def make_env(cfg: DictConfig, seed: int, train: bool = True):
    """A training (or evaluation, ``train=False``) environment of the configured domain."""
    if is_atari(cfg):
        from mlr_lightning import atari_experiment

        return atari_experiment.make_env(cfg, seed, train)
    e = cfg.env
    return make_dmc_env(e.task, e.action_repeat, e.image_size, e.camera_id, e.frame_stack, e.fast_render, seed)


def env_steps_per_agent_step(cfg: DictConfig) -> int:
    """The x-axis unit: DMC counts environment (physics) steps, Atari counts agent steps."""
    return 1 if is_atari(cfg) else cfg.env.action_repeat


def make_agent(cfg: DictConfig, env) -> pl.LightningModule:
    if is_atari(cfg):
        from mlr_lightning import atari_experiment

        return atari_experiment.make_agent(cfg, env)
    return SACMLRAgent(OmegaConf.to_container(cfg, resolve=True), action_dim=env.action_spec.shape[-1])


def make_stream(cfg: DictConfig, collector_from) -> ExperienceStream:
    if is_atari(cfg):
        from mlr_lightning import atari_experiment

        return atari_experiment.make_stream(cfg, collector_from, atari_experiment.make_replay(cfg))
    return ExperienceStream(
        collector_from,
        FrameReplay(cfg.replay.capacity, cfg.env.frame_stack, cfg.mlr.seq_len),
        total_agent_steps=cfg.train.num_env_steps // cfg.env.action_repeat,
        init_steps=cfg.train.init_steps,
        action_repeat=cfg.env.action_repeat,
        batch_size=cfg.train.batch_size,
        window_batch_size=cfg.mlr.batch_size if cfg.mlr.enabled else None,
        max_env_restarts=cfg.train.max_env_restarts,
    )


def make_evaluation(cfg: DictConfig) -> PeriodicEvaluation:
    """The environment is attached later, on the evaluating rank only."""
    if is_atari(cfg):
        from mlr_lightning.atari_experiment import hns_metrics

        return PeriodicEvaluation(None, cfg.eval.every_env_steps or None, cfg.eval.num_episodes,
                                  cfg.train.num_env_steps, extra_metrics=hns_metrics(cfg.env.task))
    return PeriodicEvaluation(None, cfg.eval.every_env_steps, cfg.eval.num_episodes, cfg.train.num_env_steps)


def rank_seed(cfg: DictConfig, rank: int) -> int:
    return cfg.seed + rank * cfg.trainer.rank_seed_stride


def make_run_dir(cfg: DictConfig) -> Path:
    name = cfg.run_name or "-".join(
        [cfg.env.task, "mlr" if cfg.mlr.enabled else "baseline", f"s{cfg.seed}", time.strftime("%Y%m%d-%H%M%S")]
    )
    run_dir = Path(cfg.output_dir).resolve() / name
    if cfg.run_name and (run_dir / "checkpoints").is_dir():
        raise ConfigError(f"run_name={cfg.run_name!r}: {run_dir} already holds a run; continue it with "
                          "--resume auto, or choose another run_name")
    if not cfg.run_name:  # never mix two runs started in the same second
        suffix = 1
        while run_dir.exists():
            suffix += 1
            run_dir = run_dir.with_name(f"{name}-{suffix}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    return run_dir


def find_resumable(cfg: DictConfig, resume: str) -> Path | None:
    """``--resume PATH`` -> that snapshot. ``--resume auto`` -> the newest snapshot of this config's
    run: ``output_dir/run_name`` when run_name is set, else the newest run directory whose
    config.yaml is this config; ``None`` (a fresh start) when there is none yet."""
    if resume != "auto":
        return resolve_snapshot(resume)
    output = Path(cfg.output_dir).resolve()
    if cfg.run_name:
        candidates = [output / cfg.run_name]
    else:
        mine = to_yaml(cfg)
        candidates = sorted((p.parent for p in output.glob("*/config.yaml") if p.read_text() == mine),
                            key=lambda p: p.stat().st_mtime, reverse=True)
    for run_dir in candidates:
        snapshot = latest_snapshot(run_dir / "checkpoints")
        if snapshot is not None:
            return snapshot
    return None


def check_same_experiment(cfg: DictConfig, run_dir: Path) -> None:
    saved = OmegaConf.load(run_dir / "config.yaml")
    changed = config_differences(saved, cfg)
    if changed:
        raise ConfigError(f"--resume continues {run_dir}, whose config differs in: {'; '.join(changed)}. "
                          f"Resume with --config {run_dir / 'config.yaml'}, or start a new run")


def _as_is(batch):
    """Batches are ready-made TensorDicts; torch's default_convert would try to index them as dicts."""
    return batch


class ExperienceDataModule(pl.LightningDataModule):
    """This rank's collector, replay and stream; saves and restores them with the snapshots."""

    def __init__(self, cfg: DictConfig, env, env_seed: int, snapshot: Path | None):
        super().__init__()
        self.cfg, self.env, self.env_seed, self.snapshot = cfg, env, env_seed, snapshot
        self.stream: ExperienceStream | None = None

    def train_dataloader(self) -> DataLoader:
        cfg, agent = self.cfg, self.trainer.lightning_module
        policy = TensorDictModule(agent.policy, in_keys=["pixels"], out_keys=["action"])

        def collector_from(start: int):
            # The first collector steps the environment built for the agent's specs; a rebuild after
            # a crash gets a new one, seeded apart so that it does not replay the same episodes.
            env, self.env = self.env, None
            if env is None:
                env = make_env(cfg, self.env_seed + self.stream.counters.env_restarts)
            total = self.stream.total_agent_steps
            return make_collector(env, policy, total - start, max(0, cfg.train.init_steps - start), agent.device)

        self.stream = make_stream(cfg, collector_from)
        if self.snapshot is not None:
            self.load_rank_state(self.snapshot, self.trainer.global_rank)
        # batch_size=None: the stream yields ready batches; num_workers=0: the collector shares the
        # live policy weights with the agent, so it must run in this process.
        return DataLoader(self.stream, batch_size=None, num_workers=0, collate_fn=_as_is)

    def save_rank_state(self, directory: Path, rank: int) -> None:
        save_torch(self.stream.state_dict(), directory / f"stream-rank{rank}.pt")
        self.stream.replay.dumps(directory / f"replay-rank{rank}")

    def load_rank_state(self, snapshot: Path, rank: int) -> None:
        state_file = snapshot / f"stream-rank{rank}.pt"
        if not state_file.is_file():
            raise CheckpointError(f"{snapshot} holds no state for rank {rank}: resume with the number of "
                                  "ranks (trainer.devices x trainer.num_nodes) that wrote it")
        self.stream.load_state_dict(torch.load(state_file, weights_only=False))  # our own file
        self.stream.replay.loads(snapshot / f"replay-rank{rank}")

    def teardown(self, stage: str) -> None:
        if self.stream is not None:
            self.stream.close()


def snapshot_env_steps(cfg: DictConfig, snapshot: Path) -> int:
    counters = torch.load(snapshot / "stream-rank0.pt", weights_only=False)["counters"]
    return counters["agent_steps"] * env_steps_per_agent_step(cfg)


def make_trainer(cfg: DictConfig, run_dir: Path, loggers, callbacks) -> pl.Trainer:
    # find_unused_parameters: each of the 3-4 backward passes of an update reaches only part of the
    # agent (critic, actor, temperature, MLR), which DDP's reducer must be told about.
    strategy = DDPStrategy(find_unused_parameters=True) if cfg.trainer.strategy == "ddp" else "auto"
    precision, plugins = cfg.trainer.precision, []
    if precision == "16-mixed" and not torch.cuda.is_available():
        # Lightning silently turns 16-mixed into bf16-mixed on CPU; keep fp16 with its gradient
        # scaler, so the configured path is the one that runs (CPU autocast supports fp16).
        precision, plugins = None, [MixedPrecision("16-mixed", device="cpu", scaler=torch.amp.GradScaler("cpu"))]
    return pl.Trainer(
        default_root_dir=run_dir,
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes,
        strategy=strategy,
        precision=precision,
        plugins=plugins,
        max_epochs=1,
        logger=loggers,
        log_every_n_steps=cfg.trainer.log_every_updates,
        enable_checkpointing=False,  # UpdateCheckpoint counts agent updates and saves the full state
        callbacks=callbacks,
    )


def fit(cfg: DictConfig, resume: str | None = None) -> Path:
    """Train one agent as configured (or continue a snapshot, ``resume``); returns the run directory."""
    check_task(cfg)
    if RUN_DIR_ENV in os.environ:  # a rank started by Lightning's DDP launcher
        snapshot = Path(os.environ[SNAPSHOT_ENV]) if os.environ.get(SNAPSHOT_ENV) else None
        return _train(cfg, Path(os.environ[RUN_DIR_ENV]), snapshot)
    snapshot = find_resumable(cfg, resume) if resume else None
    if snapshot is not None:
        run_dir = snapshot.parent.parent
        check_same_experiment(cfg, run_dir)
    else:
        run_dir = make_run_dir(cfg)
    os.environ[RUN_DIR_ENV], os.environ[SNAPSHOT_ENV] = str(run_dir), str(snapshot or "")
    try:
        return _train(cfg, run_dir, snapshot)
    finally:  # the next fit in this process (grid) starts its own run
        del os.environ[RUN_DIR_ENV], os.environ[SNAPSHOT_ENV]


def _train(cfg: DictConfig, run_dir: Path, snapshot: Path | None) -> Path:
    resume_step = snapshot_env_steps(cfg, snapshot) if snapshot is not None else None

    evaluation = make_evaluation(cfg)
    checkpoint = UpdateCheckpoint(run_dir / "checkpoints", cfg.trainer.checkpoint_every_updates, cfg.trainer.keep_checkpoints)
    interrupt = GracefulInterrupt()
    loggers = make_loggers(cfg, run_dir, resume_step)
    trainer = make_trainer(cfg, run_dir, loggers, [
        TQDMProgressBar(refresh_rate=cfg.trainer.log_every_updates),
        *([PriorityUpdate()] if is_atari(cfg) else []),  # before the snapshot, which holds the priorities
        evaluation,
        checkpoint,
        interrupt,
        RunArtifacts(run_dir, evaluation, checkpoint, cfg.tracking.video, cfg.tracking.max_checkpoint_artifact_mb),
    ])
    if trainer.is_global_zero and snapshot is None:
        remember_run(cfg, loggers, run_dir)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # the same initial networks on every rank
    env_seed = rank_seed(cfg, trainer.global_rank)
    env = make_env(cfg, env_seed)
    agent = make_agent(cfg, env)
    pl.seed_everything(env_seed, workers=True, verbose=False)  # each rank explores and samples its own way
    if trainer.is_global_zero:  # evaluation and logging happen once
        evaluation.rebuild_env = lambda: make_env(cfg, cfg.seed + cfg.eval.seed_offset, train=False)
        evaluation.env = evaluation.rebuild_env()
    data = ExperienceDataModule(cfg, env, env_seed, snapshot)
    try:
        # weights_only=False: our snapshots hold numpy RNG states; they are files this run wrote.
        trainer.fit(agent, datamodule=data, ckpt_path=snapshot / MODEL_FILE if snapshot else None, weights_only=False)
    except SIGTERMException:
        raise RunInterrupted(interrupt.signal_name or "SIGTERM", run_dir, data.stream.env_steps) from None
    except NonFiniteLossError as err:
        last = checkpoint.last_path.resolve().parent if checkpoint.last_path.exists() else None
        raise RunFailed(f"{err}; the last good checkpoint is {last or 'none (no snapshot was written yet)'}"
                        + (f": fix the cause, then --resume {last}" if last else "")) from err
    return run_dir
