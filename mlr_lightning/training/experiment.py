"""Assembles one experiment from a validated config: environments, agent, data, Trainer.

Thin on purpose: the domain (:mod:`mlr_lightning.domains`) builds the pieces that differ between
DMC and Atari, small ``make_*`` functions build the rest, and Lightning runs the loop. A run can be
resumed from a full-state snapshot (see :mod:`mlr_lightning.training.snapshot`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig
from tensordict.nn import TensorDictModule
from torch.utils.data import DataLoader
from torchrl.collectors import Collector

from mlr_lightning.agents.base import DivergedError, NonFiniteLossError, RLAgent
from mlr_lightning.data.replay import Replay
from mlr_lightning.data.stream import CollectorFactory, ExperienceStream, StepWriter, make_collector
from mlr_lightning.domains import Domain, domain_of
from mlr_lightning.run_identity import write_config_hash
from mlr_lightning.training.callbacks import GracefulInterrupt, HardStop, RunArtifacts, UpdateCheckpoint
from mlr_lightning.training.cost import RunCost
from mlr_lightning.training.evaluation import PeriodicEvaluation
from mlr_lightning.training.progress import EnvStepProgressBar
from mlr_lightning.training.pretrained import check_pretrained_encoder, load_pretrained_encoder
from mlr_lightning.training.run_dir import lock_and_check, log_error, new_run_dir
from mlr_lightning.training.snapshot import (
    MODEL_FILE,
    accept_resumed_config,
    check_snapshot_belongs,
    checkpoints_dir,
    ensure_run_uid,
    find_resumable,
    load_rank_state,
    run_dir_of,
    snapshot_agent_steps,
    snapshots,
)
from mlr_lightning.training.tracking import ensure_store_for, make_loggers, mark_run, record_status

# Set by rank 0 for the ranks Lightning's DDP launcher starts: they re-run the same command and
# must join the same run directory and snapshot instead of creating their own.
RUN_DIR_ENV, SNAPSHOT_ENV = "MLR_LIGHTNING_RUN_DIR", "MLR_LIGHTNING_SNAPSHOT"


class RunInterrupted(Exception):
    """SIGTERM or Ctrl-C: the run stopped cleanly, with a snapshot saved; or a second Ctrl-C: it
    stopped at once and ``snapshot_saved`` is False (a resume continues from the last snapshot)."""

    def __init__(self, signal_name: str, run_dir: Path, env_steps: int, snapshot_saved: bool = True):
        self.signal_name, self.run_dir, self.env_steps = signal_name, run_dir, env_steps
        self.snapshot_saved = snapshot_saved
        super().__init__(f"{signal_name} at env step {env_steps}")


class RunFailed(Exception):
    """Training stopped on an error; names the last good snapshot."""


def rank_seed(cfg: DictConfig, rank: int) -> int:
    return cfg.seed + rank * cfg.trainer.rank_seed_stride


def _as_is(batch):
    """Batches are ready-made TensorDicts; torch's default_convert would try to index them."""
    return batch


def make_agent(cfg: DictConfig, domain: Domain, fresh: bool) -> tuple[RLAgent, torch.Size]:
    """The agent (the same initial networks on every rank: seeded by ``cfg.seed``) and the shape of
    one stored observation, both read off an environment built for its specs alone (the collectors
    build their own, seeded by rank). ``fresh``: not a resume, which restores its own weights."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    specs = domain.make_env(cfg, cfg.seed)  # draws nothing from the global generators
    agent, pixels_shape = domain.make_agent(cfg, specs), specs.observation_spec["pixels"].shape  # [C*k, H, W]
    specs.close()
    if fresh:
        load_pretrained_encoder(cfg, agent)  # encoder.init_from, if set
    return agent, pixels_shape


def collector_factory(cfg: DictConfig, domain: Domain, agent: RLAgent) -> CollectorFactory:
    """Collectors for the agent steps from ``start`` on, each over a new environment seeded by the rank
    (:func:`rank_seed`) and moved by the restarts so far, so that an environment rebuilt after a crash
    does not replay the same episodes."""
    policy = TensorDictModule(agent.policy, in_keys=["pixels"], out_keys=["action"])
    total = cfg.train.num_env_steps // domain.env_steps_per_agent_step(cfg)

    def collector_from(start: int, env_restarts: int, writer: StepWriter) -> Collector:
        # Called as the stream starts, inside fit: by then the Trainer holds the agent, so its rank and
        # device are known.
        env = domain.make_env(cfg, rank_seed(cfg, agent.global_rank) + env_restarts)
        return make_collector(env, policy, writer, total - start, max(0, cfg.train.init_steps - start), agent.device)

    return collector_from


def make_stream(cfg: DictConfig, domain: Domain, replay: Replay, agent: RLAgent) -> ExperienceStream:
    """This rank's stream: the agent acts through it and learns from what it samples."""
    per_agent_step = domain.env_steps_per_agent_step(cfg)
    return ExperienceStream(collector_factory(cfg, domain, agent), replay, cfg.train.num_env_steps // per_agent_step,
                            cfg.train.init_steps, cfg.train.updates_per_step, per_agent_step,
                            cfg.train.max_env_restarts, prefetch=cfg.replay.get("prefetch", False))


@dataclass
class RunCallbacks:
    """The run's callbacks. Lightning calls each hook on them in list order, and that order matters:
    see :meth:`in_order` (``tests/test_experiment_wiring.py`` checks it on the built Trainer)."""

    cost: RunCost
    progress: EnvStepProgressBar
    domain: list[pl.Callback]
    evaluation: PeriodicEvaluation
    checkpoint: UpdateCheckpoint
    interrupt: GracefulInterrupt
    artifacts: RunArtifacts

    @classmethod
    def of(cls, cfg: DictConfig, domain: Domain, replay: Replay, stream: ExperienceStream, run_dir: Path) -> RunCallbacks:
        # Every episode seeds its environment (evaluation.episode_seed): the seed here is a placeholder.
        make_envs = lambda: [domain.make_env(cfg, cfg.seed + cfg.eval.seed_offset, train=False)  # noqa: E731
                             for _ in range(cfg.eval.num_envs)]
        evaluation = PeriodicEvaluation(make_envs, cfg.eval.every_env_steps or None, cfg.eval.num_episodes,
                                        cfg.train.num_env_steps, seed=cfg.seed + cfg.eval.seed_offset,
                                        extra_metrics=domain.eval_metrics(cfg))
        checkpoint = UpdateCheckpoint(checkpoints_dir(run_dir), cfg.trainer.checkpoint_every_updates,
                                      cfg.trainer.keep_checkpoints, stream, cfg.trainer.max_abs_weight)
        return cls(RunCost(run_dir, stream.stopwatch, lambda: stream.env_steps),
                   EnvStepProgressBar(cfg.train.num_env_steps, refresh_updates=cfg.trainer.log_every_updates),
                   domain.callbacks(cfg, replay), evaluation, checkpoint, GracefulInterrupt(),
                   RunArtifacts(run_dir, evaluation, checkpoint, cfg.tracking.video,
                                cfg.tracking.max_checkpoint_artifact_mb))

    def in_order(self) -> list[pl.Callback]:
        """The domain's callbacks change what a snapshot holds (Atari: priorities), and the evaluation
        history is part of it: both run before the checkpoint. The artifacts read the evaluation and
        the last snapshot, so they come after both. The cost comes first and its end-of-evaluation mark
        right after the evaluation: between them lies the evaluating interval (see :class:`RunCost`)."""
        return [self.cost, self.progress, *self.domain, self.evaluation, self.cost.after_evaluation, self.checkpoint,
                self.interrupt, self.artifacts]


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
        enable_model_summary=logging.getLogger("lightning.pytorch").isEnabledFor(logging.INFO),  # fit --verbose
        callbacks=callbacks,
    )


def fit(cfg: DictConfig, resume: str | None = None, allow_change: Sequence[str] = ()) -> Path:
    """Train one agent as configured (or continue a snapshot, ``resume``); returns the run directory.

    ``allow_change``: optimiser keys (the domain's ``optimizer_keys``) that a resume may
    change, e.g. a smaller learning rate after a divergence.
    """
    domain_of(cfg).check_task(cfg)
    if RUN_DIR_ENV in os.environ:  # a rank started by Lightning's DDP launcher
        snapshot = Path(os.environ[SNAPSHOT_ENV]) if os.environ.get(SNAPSHOT_ENV) else None
        return _train(cfg, Path(os.environ[RUN_DIR_ENV]), snapshot)
    snapshot = find_resumable(cfg, resume) if resume else None
    if snapshot is not None:
        check_snapshot_belongs(snapshot, cfg.run_name)
        run_dir = run_dir_of(snapshot)
        lock = lock_and_check(run_dir, lambda: accept_resumed_config(cfg, run_dir, domain_of(cfg), allow_change))
    else:
        ensure_store_for(cfg)  # an unusable store stops a new run before its directory exists
        check_pretrained_encoder(cfg)  # encoder.init_from's source (a resume restores its own weights)
        run_dir, lock = new_run_dir(cfg, restart=resume == "auto")
    write_config_hash(cfg, run_dir)  # what the run computes, beside its config.yaml
    ensure_run_uid(run_dir)  # which run this is: every snapshot records it
    os.environ[RUN_DIR_ENV], os.environ[SNAPSHOT_ENV] = str(run_dir), str(snapshot or "")
    try:
        _train(cfg, run_dir, snapshot)
        record_status(run_dir, "FINISHED")  # for sync, if MLflow went down during the run
        return run_dir
    except RunInterrupted as stop:
        mark_run(run_dir, "KILLED", f"{stop.signal_name} at env step {stop.env_steps}; resume with --resume {run_dir}")
        raise
    except KeyboardInterrupt:  # Ctrl-C before training started (training turns it into RunInterrupted)
        mark_run(run_dir, "KILLED", "interrupted during start-up; run the same command again")
        raise
    except BaseException as err:  # the MLflow run says why it failed, also for failures before training
        mark_run(run_dir, "FAILED", f"{type(err).__name__}: {err}")
        if (log := log_error(run_dir, err)) is not None:
            resume = (f"the run continues from its last snapshot with --resume {run_dir}"
                      if snapshots(checkpoints_dir(run_dir)) else
                      "the run has no snapshot yet: the same command with --resume auto starts it again")
            err.add_note(f"The traceback is also in {log}; {resume}")
        raise
    finally:  # the next fit in this process (grid) starts its own run
        del os.environ[RUN_DIR_ENV], os.environ[SNAPSHOT_ENV]
        lock.release()


def _train(cfg: DictConfig, run_dir: Path, snapshot: Path | None) -> Path:
    domain = domain_of(cfg)
    per_agent_step = domain.env_steps_per_agent_step(cfg)
    resume_step = snapshot_agent_steps(snapshot) * per_agent_step if snapshot is not None else None

    replay = domain.make_replay(cfg)
    loggers = make_loggers(cfg, run_dir, resume_step)  # creates (or reopens) the MLflow run on rank 0
    agent, pixels_shape = make_agent(cfg, domain, fresh=snapshot is None)
    stream = make_stream(cfg, domain, replay, agent)
    callbacks = RunCallbacks.of(cfg, domain, replay, stream, run_dir)
    checkpoint, interrupt = callbacks.checkpoint, callbacks.interrupt
    trainer = make_trainer(cfg, run_dir, loggers, callbacks.in_order())

    replay.place(cfg.replay.device, trainer.strategy.root_device, pixels_shape)
    # Each rank explores and samples its own way (its collectors' environments too: collector_factory).
    pl.seed_everything(rank_seed(cfg, trainer.global_rank), workers=True, verbose=False)
    if snapshot is not None:
        load_rank_state(snapshot, trainer.global_rank, stream)
    # batch_size=None: the stream yields ready batches; num_workers=0: the collector shares the live
    # policy weights with the agent, so it must run in this process.
    data = DataLoader(stream, batch_size=None, num_workers=0, collate_fn=_as_is)
    try:
        # weights_only=False: our snapshots hold numpy RNG states; they are files this run wrote.
        trainer.fit(agent, train_dataloaders=data, ckpt_path=snapshot / MODEL_FILE if snapshot else None,
                    weights_only=False)
    except SIGTERMException:
        raise RunInterrupted(interrupt.signal_name or "SIGTERM", run_dir, stream.env_steps) from None
    except HardStop:
        raise RunInterrupted("SIGINT", run_dir, stream.env_steps, snapshot_saved=False) from None
    except (NonFiniteLossError, DivergedError) as err:
        last = checkpoint.last_path.resolve().parent if checkpoint.last_path.exists() else None
        raise RunFailed(f"{err}; the last good checkpoint is {last or 'none (no snapshot was written yet)'}"
                        + (f": fix the cause, then --resume {last}" if last else "")) from err
    finally:
        stream.close()
    return run_dir
