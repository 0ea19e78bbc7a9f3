"""Lightning callbacks of a run: snapshots per update count, graceful SIGTERM/Ctrl-C, end-of-run
artifacts, and priorities written back into a prioritized replay. (Evaluation: :mod:`.evaluation`.)"""

from __future__ import annotations

import signal
import sys
import threading
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np

from mlr_lightning.agents.base import NonFiniteLossError
from mlr_lightning.data.stream import ExperienceStream
from mlr_lightning.reporting.plots import episode_gif, learning_curves
from mlr_lightning.training.evaluation import PeriodicEvaluation, as_policy, record_episode
from mlr_lightning.training.snapshot import LAST, MODEL_FILE, CheckpointError, save_rank_state, snapshot_name, write_snapshot
from mlr_lightning.training.tracking import mlflow_logger


class UpdateCheckpoint(pl.Callback):
    """Full-state snapshots (see :mod:`mlr_lightning.training.snapshot`) of the agent and this rank's
    ``stream`` every ``every_updates`` agent updates, at the end of training, on SIGTERM/Ctrl-C and
    on a crash.

    Lightning's ``ModelCheckpoint(every_n_train_steps=...)`` counts optimizer steps, which under
    manual optimization with 3-4 optimizers per update is not a meaningful unit here; and it saves
    no replay. A failed periodic save (a full disk, say) warns and training goes on, with the
    previous snapshot intact.
    """

    def __init__(self, dirpath: Path, every_updates: int, keep: int, stream: ExperienceStream):
        self.dirpath, self.every, self.keep, self.stream = Path(dirpath), every_updates, keep, stream

    @property
    def last_path(self) -> Path:
        return self.dirpath / LAST

    def save(self, trainer: pl.Trainer, pl_module) -> Path:
        def write(directory: Path) -> None:
            trainer.save_checkpoint(directory / MODEL_FILE)  # collective; rank 0 writes
            save_rank_state(directory, trainer.global_rank, self.stream)

        # Room for this rank's replay and the networks with their Adam moments, plus a margin.
        needed = self.stream.replay.nbytes + 4 * sum(p.numel() * p.element_size() for p in pl_module.parameters())
        return write_snapshot(self.dirpath, snapshot_name(int(pl_module.num_updates)), write, self.keep,
                              min_free_bytes=int(1.1 * needed), is_writer=trainer.is_global_zero,
                              barrier=trainer.strategy.barrier)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if int(pl_module.num_updates) % self.every == 0:
            try:
                self.save(trainer, pl_module)
            except CheckpointError as err:
                warnings.warn(str(err))

    def on_train_end(self, trainer, pl_module):
        self.save(trainer, pl_module)

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, (NonFiniteLossError, CheckpointError)):
            return  # non-finite weights, or a disk that just refused a snapshot: keep the last good one
        # SIGTERM and Ctrl-C arrive between updates; a crash keeps what was learned up to it.
        try:
            self.save(trainer, pl_module)
        except Exception as err:  # never hide the original exception behind a failed save
            warnings.warn(f"could not save a checkpoint after {type(exception).__name__}: {err}")


class GracefulInterrupt(pl.Callback):
    """Ctrl-C takes Lightning's SIGTERM path: finish the running update, save, stop cleanly.

    Lightning raises ``SIGTERMException`` at the next batch boundary after a SIGTERM, so the
    snapshot is taken between two updates and the resumed run continues exactly. A second Ctrl-C
    interrupts at once (Lightning then saves through ``on_exception``).
    """

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = None

    def on_train_start(self, trainer, pl_module):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
            signal.signal(signal.SIGTERM, self._noting(signal.getsignal(signal.SIGTERM)))

    def _noting(self, handler):
        def note_sigterm(signum, frame):
            self.signal_name = self.signal_name or "SIGTERM"
            if callable(handler):
                handler(signum, frame)
        return note_sigterm

    def _on_sigint(self, signum, frame):
        if self.signal_name == "SIGINT":
            raise KeyboardInterrupt
        self.signal_name = "SIGINT"
        print("\nCtrl-C: finishing the current update, then saving a checkpoint (Ctrl-C again to stop at once).",
              file=sys.stderr, flush=True)
        signal.raise_signal(signal.SIGTERM)

    def teardown(self, trainer, pl_module, stage):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class RunArtifacts(pl.Callback):
    """At the end of training: a learning-curve PNG and an evaluation GIF in the run directory, and
    the config, those figures and the final checkpoint (or its path, when large) as MLflow artifacts.

    Place it after :class:`PeriodicEvaluation` and :class:`UpdateCheckpoint`: it reads their output.
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
            _, frames = record_episode(self.evaluation.env, as_policy(pl_module))
            files.append(episode_gif(frames.numpy(), self.run_dir / "eval_episode.gif"))
        logger = mlflow_logger(trainer.loggers)
        if logger is None:
            return
        for logger_ in trainer.loggers:  # flush metrics.csv before uploading it
            logger_.save()
        client, run_id = logger.experiment, logger.run_id
        for path in files:
            client.log_artifact(run_id, str(path))
        ckpt = self.checkpoint.last_path
        client.set_tag(run_id, "checkpoint_path", str(ckpt))
        if ckpt.stat().st_size <= self.max_checkpoint_mb * 2**20:
            client.log_artifact(run_id, str(ckpt), artifact_path="checkpoints")


class PriorityUpdate(pl.Callback):
    """Writes the priorities returned by ``training_step`` (``index``, ``priority``) into this
    rank's prioritized replay. Place it before the checkpoint callback, so that a snapshot holds them."""

    def __init__(self, replay):
        self.replay = replay

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.replay.update_priority(outputs["index"], outputs["priority"])
