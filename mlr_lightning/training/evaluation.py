"""Evaluation: deterministic episodes, and the callback that runs them on the env-step schedule."""

from __future__ import annotations

import statistics
import sys
import warnings
from typing import Callable

import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import SIGTERMException
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from torch import Tensor
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type


MAX_EPISODE_STEPS = 10**7  # episodes end through the environment's own time limit


class EvaluationInterrupted(Exception):
    """A stop (SIGTERM, Ctrl-C) arrived between two evaluation episodes."""


@torch.no_grad()
def evaluate(env: EnvBase, policy: TensorDictModule, num_episodes: int,
             should_stop: Callable[[], bool] = lambda: False) -> list[float]:
    """Returns of ``num_episodes`` episodes with the mean action (exploration off); ``should_stop``
    is asked before each episode, so a stop waits for one episode, not for the whole evaluation."""
    returns = []
    for _ in range(num_episodes):
        if should_stop():
            raise EvaluationInterrupted
        returns.append(record_episode(env, policy)[0])
    return returns


@torch.no_grad()
def deterministic_episode(env: EnvBase, policy: TensorDictModule) -> TensorDictBase:
    """One episode with the mean action (exploration off), as a TorchRL rollout ``[T]``."""
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        return env.rollout(max_steps=MAX_EPISODE_STEPS, policy=policy, break_when_any_done=True)


def record_episode(env: EnvBase, policy: TensorDictModule) -> tuple[float, Tensor]:
    """One deterministic episode: its return and its frames ``[T + 1, H, W, 3]`` uint8 (newest of each stack)."""
    rollout = deterministic_episode(env, policy)
    pixels = torch.cat([rollout["pixels"], rollout["next", "pixels"][-1:]])  # [T + 1, 3S, H, W]
    # RGB stacks (3 channels per frame): the newest frame; grayscale stacks (Atari): the newest, as grey.
    newest = pixels[:, -3:] if pixels.shape[1] % 3 == 0 else pixels[:, -1:].expand(-1, 3, -1, -1)
    frames = newest.permute(0, 2, 3, 1).contiguous()
    return float(rollout["next", "reward"].sum()), frames


class PeriodicEvaluation(pl.Callback):
    """Evaluates at every multiple of ``every_env_steps`` and at the end of training.

    Environment steps are the paper's x-axis (DMC: agent steps x action repeat; Atari: agent steps). Evaluation points that
    fall inside the random seed phase (no update yet) are evaluated with the untrained policy when
    the first update arrives, so none is skipped. Under DDP only global rank 0 has an ``env`` and
    evaluates; the others pass ``None``.

    A SIGTERM or Ctrl-C during an evaluation stops it after the running episode: the evaluation
    environment is put back as it was before the evaluation, nothing is recorded, and the resumed
    run evaluates that point again (with the same episodes). During the final evaluation the stop
    is raised at once; otherwise after the current update, as Lightning does.
    """

    def __init__(self, every_env_steps: int | None, num_episodes: int, final_env_steps: int,
                 extra_metrics: Callable[[list[float]], dict] | None = None, env: EnvBase | None = None,
                 rebuild_env: Callable[[], EnvBase] | None = None):
        # every_env_steps=None: only at the end of training. extra_metrics: returns -> more metrics (Atari HNS).
        self.env, self.every, self.num_episodes, self.final = env, every_env_steps, num_episodes, final_env_steps
        self.rebuild_env, self.extra_metrics = rebuild_env, extra_metrics
        self.env_restarts = 0
        self.next_eval = 0 if every_env_steps else final_env_steps
        self.history: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.env is None:  # not the evaluating rank
            return
        while self.every and self.next_eval <= batch["env_steps"]:
            if not self._evaluate(trainer, pl_module, self.next_eval):
                return  # stopped: Lightning ends the run after this update
            self.next_eval += self.every

    def on_train_end(self, trainer, pl_module):
        if self.env is None:
            return
        while self.every and self.next_eval <= self.final:
            if not self._evaluate(trainer, pl_module, self.next_eval):
                raise SIGTERMException
            self.next_eval += self.every
        if not self.history or self.history[-1]["env_steps"] != self.final:
            if not self._evaluate(trainer, pl_module, self.final):
                raise SIGTERMException

    def _evaluate(self, trainer: pl.Trainer, pl_module, env_steps: int) -> bool:
        """Evaluate and log; False if a stop interrupted it (then nothing changed)."""
        before = self.env.get_state()
        stop = lambda: bool(getattr(trainer, "received_sigterm", False))  # noqa: E731
        try:
            try:
                returns = evaluate(self.env, as_policy(pl_module), self.num_episodes, stop)
            except EvaluationInterrupted:
                raise
            except Exception as err:  # a renderer or simulator failure: rebuild the env, evaluate again once
                if self.rebuild_env is None:
                    raise
                warnings.warn(f"evaluation environment crashed at env step {env_steps} ({err!r}); rebuilding it")
                self.env_restarts += 1
                self.env = self.rebuild_env()
                returns = evaluate(self.env, as_policy(pl_module), self.num_episodes, stop)
        except EvaluationInterrupted:
            self.env.set_state(before)
            print(f"Stopping: the evaluation at env step {env_steps} was interrupted; the resumed run repeats it.",
                  file=sys.stderr, flush=True)
            return False
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
        return True

    def state_dict(self) -> dict:
        if self.env is None:
            return {}
        # The evaluation environment's RNG decides the next evaluation episodes' initial states.
        return {"next_eval": self.next_eval, "history": self.history, "env_restarts": self.env_restarts,
                "env": self.env.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.env is None:
            return
        self.next_eval, self.history = state_dict["next_eval"], state_dict["history"]
        self.env_restarts = state_dict["env_restarts"]
        self.env.set_state(state_dict["env"])


def as_policy(pl_module) -> TensorDictModule:
    return TensorDictModule(pl_module.policy, in_keys=["pixels"], out_keys=["action"])
