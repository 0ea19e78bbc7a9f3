"""Lightning callbacks: evaluation on the environment-step schedule, and checkpoints per update count."""

from __future__ import annotations

import statistics
from pathlib import Path

import lightning.pytorch as pl
from tensordict.nn import TensorDictModule
from torchrl.envs import EnvBase

from mlr_lightning.evaluation import evaluate


class PeriodicEvaluation(pl.Callback):
    """Evaluates at every multiple of ``every_env_steps`` and at the end of training.

    Environment steps are agent steps x action repeat, the paper's x-axis. Evaluation points that
    fall inside the random seed phase (no update yet) are evaluated with the untrained policy when
    the first update arrives, so none is skipped.
    """

    def __init__(self, env: EnvBase, every_env_steps: int, num_episodes: int, final_env_steps: int):
        self.env, self.every, self.num_episodes, self.final = env, every_env_steps, num_episodes, final_env_steps
        self.next_eval = 0
        self.history: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        while self.next_eval <= batch["env_steps"]:
            self._evaluate(trainer, pl_module, self.next_eval)
            self.next_eval += self.every

    def on_train_end(self, trainer, pl_module):
        while self.next_eval <= self.final:
            self._evaluate(trainer, pl_module, self.next_eval)
            self.next_eval += self.every
        if not self.history or self.history[-1]["env_steps"] != self.final:
            self._evaluate(trainer, pl_module, self.final)

    def _evaluate(self, trainer: pl.Trainer, pl_module, env_steps: int) -> None:
        policy = TensorDictModule(pl_module.policy, in_keys=["pixels"], out_keys=["action"])
        returns = evaluate(self.env, policy, self.num_episodes)
        metrics = {
            "eval/return_mean": statistics.fmean(returns),
            "eval/return_std": statistics.pstdev(returns),
            "env_steps": float(env_steps),
        }
        self.history.append({"env_steps": env_steps, "returns": returns})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=env_steps)
        trainer.progress_bar_metrics["eval_return"] = round(metrics["eval/return_mean"], 1)

    def state_dict(self) -> dict:
        return {"next_eval": self.next_eval, "history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.next_eval, self.history = state_dict["next_eval"], state_dict["history"]


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
