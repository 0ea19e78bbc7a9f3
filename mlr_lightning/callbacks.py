"""Lightning callbacks: evaluation on the environment-step schedule, and checkpoints per update count."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
from tensordict.nn import TensorDictModule
from torchrl.envs import EnvBase

from mlr_lightning.evaluation import evaluate, record_episode
from mlr_lightning.plots import episode_gif, learning_curves
from mlr_lightning.tracking import mlflow_logger


class PeriodicEvaluation(pl.Callback):
    """Evaluates at every multiple of ``every_env_steps`` and at the end of training.

    Environment steps are agent steps x action repeat, the paper's x-axis. Evaluation points that
    fall inside the random seed phase (no update yet) are evaluated with the untrained policy when
    the first update arrives, so none is skipped.
    """

    def __init__(self, env: EnvBase, every_env_steps: int | None, num_episodes: int, final_env_steps: int,
                 extra_metrics: Callable[[list[float]], dict] | None = None):
        # every_env_steps=None: only at the end of training. extra_metrics: returns -> more metrics (Atari HNS).
        self.env, self.every, self.num_episodes, self.final = env, every_env_steps, num_episodes, final_env_steps
        self.extra_metrics = extra_metrics
        self.next_eval = 0 if every_env_steps else final_env_steps
        self.history: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        while self.every and self.next_eval <= batch["env_steps"]:
            self._evaluate(trainer, pl_module, self.next_eval)
            self.next_eval += self.every

    def on_train_end(self, trainer, pl_module):
        while self.every and self.next_eval <= self.final:
            self._evaluate(trainer, pl_module, self.next_eval)
            self.next_eval += self.every
        if not self.history or self.history[-1]["env_steps"] != self.final:
            self._evaluate(trainer, pl_module, self.final)

    def _evaluate(self, trainer: pl.Trainer, pl_module, env_steps: int) -> None:
        returns = evaluate(self.env, as_policy(pl_module), self.num_episodes)
        metrics = {
            "eval/return_mean": statistics.fmean(returns),
            "eval/return_std": statistics.pstdev(returns),
            "env_steps": float(env_steps),
        }
        if self.extra_metrics is not None:
            metrics |= self.extra_metrics(returns)
        self.history.append({"env_steps": env_steps, "returns": returns,
                             "mean": metrics["eval/return_mean"], "std": metrics["eval/return_std"]})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=env_steps)
        trainer.progress_bar_metrics["eval_return"] = round(metrics["eval/return_mean"], 1)

    def state_dict(self) -> dict:
        return {"next_eval": self.next_eval, "history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.next_eval, self.history = state_dict["next_eval"], state_dict["history"]


def as_policy(pl_module) -> TensorDictModule:
    return TensorDictModule(pl_module.policy, in_keys=["pixels"], out_keys=["action"])


class UpdateCheckpoint(pl.Callback):
    """Saves ``last.ckpt`` every ``every_updates`` agent updates and at the end of training.

    Lightning's ``ModelCheckpoint(every_n_train_steps=...)`` counts optimizer steps, which under
    manual optimization with 3-4 optimizers per update is not a meaningful unit here.
    """

    def __init__(self, dirpath: Path, every_updates: int):
        self.dirpath, self.every = Path(dirpath), every_updates

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if int(pl_module.num_updates) % self.every == 0:
            trainer.save_checkpoint(self.last_path)

    def on_train_end(self, trainer, pl_module):
        trainer.save_checkpoint(self.last_path)

    def on_exception(self, trainer, pl_module, exception):
        # A crash or Ctrl-C keeps what was learned: save before Lightning tears the run down.
        trainer.save_checkpoint(self.last_path)


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
