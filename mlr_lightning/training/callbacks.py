"""Lightning callbacks of a run: snapshots per update count, graceful SIGTERM/Ctrl-C, end-of-run
artifacts, and priorities written back into a prioritized replay. (Evaluation: :mod:`.evaluation`.)"""

from __future__ import annotations

import signal
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from mlr_lightning.agents.base import DivergedError, NonFiniteLossError, check_parameters
from mlr_lightning.data.stream import ExperienceStream
from mlr_lightning.plots import episode_gif, learning_curves
from mlr_lightning.training.evaluation import FinalEvaluationInterrupted, PeriodicEvaluation, as_policy, record_episode
from mlr_lightning.training.snapshot import CHECKPOINTS, LAST, MODEL_FILE, CheckpointError, save_rank_state, snapshot_name, write_snapshot
from mlr_lightning.training.tracking import mlflow_logger


class UpdateCheckpoint(pl.Callback):
    """Full-state snapshots (see :mod:`mlr_lightning.training.snapshot`) of the agent and this rank's
    ``stream`` every ``every_updates`` agent updates, after the last update (before the final
    evaluation), at the end of training, on SIGTERM/Ctrl-C and on a crash.

    Lightning's ``ModelCheckpoint(every_n_train_steps=...)`` counts optimizer steps, which under
    manual optimization with 3-4 optimizers per update is not a meaningful unit here; and it saves
    no replay. A failed periodic save (a full disk, say) warns and training goes on, with the
    previous snapshot intact; so does a failed final save when an earlier snapshot exists (the run's
    curves and metrics are complete). Parameters are checked before every save (``max_abs_weight``):
    a diverged state is never called a good snapshot.
    """

    def __init__(self, dirpath: Path, every_updates: int, keep: int, stream: ExperienceStream,
                 max_abs_weight: float = float("inf")):
        self.dirpath, self.every, self.keep, self.stream = Path(dirpath), every_updates, keep, stream
        self.max_abs_weight = max_abs_weight

    @property
    def last_path(self) -> Path:
        return self.dirpath / LAST

    def save(self, trainer: pl.Trainer, pl_module) -> Path:
        check_parameters(pl_module, self.max_abs_weight, int(pl_module.num_updates))

        def write(directory: Path) -> None:
            trainer.save_checkpoint(directory / MODEL_FILE)  # collective; rank 0 writes
            save_rank_state(directory, trainer.global_rank, self.stream)

        # Room for this rank's replay and the networks with their Adam moments, plus a margin.
        needed = self.stream.replay.nbytes + 4 * sum(p.numel() * p.element_size() for p in pl_module.parameters())
        return write_snapshot(self.dirpath, snapshot_name(int(pl_module.num_updates)), write, self.keep,
                              min_free_bytes=int(1.1 * needed), is_writer=trainer.is_global_zero,
                              barrier=trainer.strategy.barrier)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # Also after the last update: the state before the end-of-training evaluations, which a stop
        # during them resumes from (the snapshot of on_train_end has Lightning's loop finished).
        updates = int(pl_module.num_updates)
        if updates % self.every == 0 or updates == len(self.stream):
            flush_logs(trainer)
            try:
                self.save(trainer, pl_module)
            except CheckpointError as err:
                warnings.warn(str(err))

    def on_train_end(self, trainer, pl_module):
        try:
            self.save(trainer, pl_module)
        except CheckpointError as err:
            if not self.last_path.exists():
                raise
            warnings.warn(f"the final snapshot failed; the run is complete and resumable from the last one: {err}")

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, (NonFiniteLossError, DivergedError, CheckpointError, HardStop,
                                  FinalEvaluationInterrupted)):
            # non-finite or diverged weights, a disk that just refused a snapshot, a second Ctrl-C
            # that may have landed mid-update, or a stop in the final evaluation (the snapshot of the
            # last update is the state before it): keep the last good snapshot as it is.
            return
        if self.stream.counters.agent_steps == 0:
            return  # failed before collecting anything: there is nothing to save
        # SIGTERM and Ctrl-C arrive between updates; a crash keeps what was learned up to it.
        try:
            self.save(trainer, pl_module)
        except Exception as err:  # never hide the original exception behind a failed save
            warnings.warn(f"could not save a checkpoint after {type(exception).__name__}: {err}")


def flush_logs(trainer: pl.Trainer) -> None:
    """Log this update's metrics and write the logs now, before a snapshot: Lightning logs an update
    after the callbacks' ``on_train_batch_end``, so a SIGKILL right after the snapshot would lose them
    for good (the resumed run starts after that update). Lightning's own call that follows is a repeat
    the loggers drop (:class:`~mlr_lightning.training.tracking.EnvStepAxis`). Lightning offers no
    public hook after its logging, hence its connector."""
    trainer._logger_connector.update_train_step_metrics()
    for logger in trainer.loggers:
        logger.save()


class HardStop(BaseException):
    """A second Ctrl-C: the run stops at once and saves nothing, since it may have landed in the
    middle of an update or a collection step; a resume continues from the last snapshot.

    A ``BaseException``, like ``KeyboardInterrupt``: it is raised wherever the signal lands, and code
    that survives errors there (a crashing environment is rebuilt) must not survive it."""


class GracefulInterrupt(pl.Callback):
    """Ctrl-C and SIGHUP (a closed terminal) take Lightning's SIGTERM path: finish the running update
    (or the running evaluation episode), save, stop cleanly.

    Lightning raises ``SIGTERMException`` at the next batch boundary after a SIGTERM, so the
    snapshot is taken between two updates and the resumed run continues exactly. A second Ctrl-C
    stops at once with :class:`HardStop` and no snapshot.
    """

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = self._previous_hup = None

    def on_train_start(self, trainer, pl_module):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
            self._previous_hup = signal.signal(signal.SIGHUP, self._on_sighup)
            signal.signal(signal.SIGTERM, self._noting(signal.getsignal(signal.SIGTERM)))

    def _noting(self, handler):
        def note_sigterm(signum, frame):
            self.signal_name = self.signal_name or "SIGTERM"
            if callable(handler):
                handler(signum, frame)
        return note_sigterm

    def _on_sighup(self, signum, frame):
        """A closed terminal or ssh session: stop as on SIGTERM (whose default would kill the run
        without a snapshot). Nothing is printed: the terminal is gone."""
        self.signal_name = self.signal_name or "SIGHUP"
        signal.raise_signal(signal.SIGTERM)

    def _on_sigint(self, signum, frame):
        if self.signal_name == "SIGINT":
            raise HardStop("a second Ctrl-C stopped the run at once, without a snapshot")
        self.signal_name = "SIGINT"
        print("\nCtrl-C: finishing the current update, then saving a checkpoint (Ctrl-C again to stop at once).",
              file=sys.stderr, flush=True)
        signal.raise_signal(signal.SIGTERM)

    def teardown(self, trainer, pl_module, stage):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            signal.signal(signal.SIGHUP, self._previous_hup)
            self._previous = None


class RunArtifacts(pl.Callback):
    """At the end of training: a learning-curve PNG and an evaluation GIF in the run directory, and
    the config, those figures, ``metrics.csv`` and the final agent as MLflow artifacts.

    The agent is uploaded as a weights-only checkpoint (networks and hyperparameters, loadable with
    ``load_from_checkpoint``; no optimiser states and no replay), so the artifact store does not hold
    the snapshot a second time; the snapshot's path is the ``checkpoint_path`` tag. Place this callback
    after :class:`PeriodicEvaluation` and :class:`UpdateCheckpoint`: it reads their output.
    """

    def __init__(self, run_dir: Path, evaluation: PeriodicEvaluation, checkpoint: UpdateCheckpoint,
                 video: bool, max_checkpoint_mb: float):
        self.run_dir, self.evaluation, self.checkpoint = Path(run_dir), evaluation, checkpoint
        self.video, self.max_checkpoint_mb = video, max_checkpoint_mb

    def on_train_end(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        steps, mean, std = (np.array([h[key] for h in self.evaluation.history]) for key in ("env_steps", "mean", "std"))
        files = [self.run_dir / "config.yaml", self.run_dir / "metrics.csv",
                 learning_curves({self.run_dir.name: (steps, mean, mean - std, mean + std)},
                                 self.run_dir / "learning_curve.png", title="evaluation return (mean ± std over episodes)")]
        if self.video:
            _, frames = record_episode(self.evaluation.envs[0], as_policy(pl_module))
            files.append(episode_gif(frames.numpy(), self.run_dir / "eval_episode.gif"))
        logger = mlflow_logger(trainer.loggers)
        if logger is None:
            return
        for logger_ in trainer.loggers:  # flush metrics.csv before uploading it
            logger_.save()
        logger.call("uploading artifacts", self.upload, logger.experiment, logger.run_id, files)

    def upload(self, client, run_id: str, files: list[Path]) -> None:
        for path in files:
            client.log_artifact(run_id, str(path))
        ckpt = self.checkpoint.last_path
        client.set_tag(run_id, "checkpoint_path", str(ckpt))
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / LAST
            save_weights_only(ckpt, weights)
            if weights.stat().st_size <= self.max_checkpoint_mb * 2**20:
                client.log_artifact(run_id, str(weights), artifact_path=CHECKPOINTS)


def save_weights_only(checkpoint: Path, path: Path) -> None:
    """A Lightning checkpoint reduced to what ``load_from_checkpoint`` needs: weights and hyperparameters."""
    full = torch.load(checkpoint, map_location="cpu", weights_only=False)  # our own file
    keep = ("state_dict", "hyper_parameters", "hparams_name", "pytorch-lightning_version", "epoch", "global_step")
    torch.save({k: v for k, v in full.items() if k in keep}, path)

