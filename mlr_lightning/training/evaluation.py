"""Evaluation: deterministic episodes, and the callback that runs them on the env-step schedule."""

from __future__ import annotations

import statistics
import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import SIGTERMException
import numpy as np
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from torch import Tensor
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type, step_mdp


MAX_EPISODE_STEPS = 10**7  # episodes end through the environment's own time limit


class EvaluationInterrupted(Exception):
    """A stop (SIGTERM, Ctrl-C) arrived between two evaluation episodes."""


class FinalEvaluationInterrupted(SIGTERMException):
    """A stop during the evaluations at the end of training: the run stops without a new snapshot
    and resumes from the one of its last update, taken before these evaluations."""


def episode_seed(seed: int, env_steps: int, episode: int) -> int:
    """The seed of one evaluation episode: a function of the run's evaluation seed, the evaluation
    point and the episode's index only, so an evaluation repeated after a stop, or run on any number
    of environments, plays the same episodes."""
    return int(np.random.SeedSequence([seed, env_steps, episode]).generate_state(1)[0])


@dataclass
class _Episode:
    index: int
    observation: TensorDictBase  # what the policy acts on next
    noise: torch.Generator  # the policy's draws (Atari's evaluation epsilon)
    rewards: list[Tensor] = field(default_factory=list)


@torch.no_grad()
def evaluate(envs: Sequence[EnvBase], policy: Callable[[Tensor, Tensor], Tensor], seed: int, env_steps: int,
             num_episodes: int, should_stop: Callable[[], bool] = lambda: False,
             device: torch.device = torch.device("cpu")) -> list[float]:
    """Returns of the ``num_episodes`` episodes of the evaluation at ``env_steps`` (exploration off), in
    episode order.

    The environments step together, one batched policy call per step (``pixels [N, S*C, H, W]``,
    ``eval_noise [N, 2]`` -> actions ``[N, ...]``); each takes the next episode when its own ends.
    Episode ``i`` starts from the state of :func:`episode_seed` ``(seed, env_steps, i)`` and draws
    from a generator of that seed, so its return is the same on any number of environments.
    ``should_stop`` is asked before each episode: a stop abandons the running ones (nothing is kept)
    instead of waiting for the whole evaluation.
    """
    returns: list[float | None] = [None] * num_episodes
    running: dict[int, _Episode] = {}
    upcoming = iter(range(num_episodes))
    # Nothing here should draw from torch's global generator; fork_rng makes sure training never sees it.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            set_exploration_type(ExplorationType.DETERMINISTIC):
        while True:
            for slot, env in enumerate(envs):
                if slot not in running and (episode := next(upcoming, None)) is not None:
                    if should_stop():
                        raise EvaluationInterrupted
                    episode_seed_ = episode_seed(seed, env_steps, episode)
                    env.set_seed(episode_seed_)
                    running[slot] = _Episode(episode, env.reset(), torch.Generator().manual_seed(episode_seed_))
            if not running:
                return returns
            slots = sorted(running)
            pixels = torch.stack([running[slot].observation["pixels"] for slot in slots]).to(device)
            noise = torch.stack([torch.rand(2, generator=running[slot].noise) for slot in slots])
            actions = policy(pixels, noise.to(device)).cpu()
            for slot, action in zip(slots, actions):
                episode = running[slot]
                step = envs[slot].step(episode.observation.set("action", action))
                episode.rewards.append(step["next", "reward"])
                if step["next", "done"].item():
                    returns[episode.index] = float(torch.cat(episode.rewards).sum())
                    del running[slot]
                else:
                    episode.observation = step_mdp(step)


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
    the first update arrives, so none is skipped. Under DDP only global rank 0 evaluates: it builds its
    environments (``make_envs``: ``eval.num_envs`` of them, stepped together) in :meth:`setup`, when
    the Trainer knows the ranks; the other ranks have none.

    An evaluation is a function of the weights and of its env step alone (:func:`evaluate`): it holds no state and draws nothing that training draws, so a stopped
    evaluation (SIGTERM or Ctrl-C, after its running episode) is simply done again by the resumed
    run, which then goes on exactly as an uninterrupted one:

    - a stop in an intermediate evaluation is recorded as *pending*, with the weights it evaluates;
      Lightning finishes the update already under way and snapshots after it, and the resumed run
      evaluates the pending point with those weights first;
    - a stop in the end-of-training evaluations saves nothing (:class:`FinalEvaluationInterrupted`):
      the run resumes from the snapshot of its last update, taken before them (see
      :class:`~mlr_lightning.training.callbacks.UpdateCheckpoint`), and evaluates them again. A run is
      finished only with its final evaluation logged.
    """

    def __init__(self, make_envs: Callable[[], list[EnvBase]], every_env_steps: int | None, num_episodes: int,
                 final_env_steps: int, seed: int = 0, extra_metrics: Callable[[list[float]], dict] | None = None):
        # make_envs: also rebuilds them after a crash. every_env_steps=None: only at the end of training.
        # seed: the evaluation episodes' (with the env step and the episode index). extra_metrics:
        # returns -> more metrics (Atari HNS).
        self.make_envs, self.every, self.num_episodes, self.final = make_envs, every_env_steps, num_episodes, final_env_steps
        self.seed, self.extra_metrics = seed, extra_metrics
        self.envs: list[EnvBase] = []  # built by setup, on the evaluating rank only
        self.env_restarts = 0
        self.next_eval = 0 if every_env_steps else final_env_steps
        self.history: list[dict] = []
        # Stopped intermediate evaluations: {"env_steps": [X, ...], "weights": the module's state_dict they evaluate}.
        self.pending: dict | None = None

    def setup(self, trainer, pl_module, stage):
        # Before Lightning restores a snapshot: load_state_dict needs to know whether this rank evaluates.
        if trainer.is_global_zero and not self.envs:
            self.envs = self.make_envs()

    def teardown(self, trainer, pl_module, stage):
        for env in self.envs:
            env.close()
        self.envs = []

    def on_train_start(self, trainer, pl_module):
        """A resumed run first repeats the evaluations a stop interrupted, with the weights they had."""
        if not self.envs or self.pending is None:
            return
        current = {k: v.clone() for k, v in pl_module.state_dict().items()}
        pl_module.load_state_dict(self.pending["weights"])
        try:
            while self.pending["env_steps"]:
                if not self._evaluate(trainer, pl_module, self.pending["env_steps"][0]):
                    raise SIGTERMException  # stopped again: the snapshot keeps them pending
                self.pending["env_steps"].pop(0)
        finally:
            pl_module.load_state_dict(current)
        self.pending = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.envs:  # not the evaluating rank
            return
        due = []
        while self.every and self.next_eval <= batch["env_steps"]:
            due.append(self.next_eval)
            self.next_eval += self.every
        for i, env_steps in enumerate(due):
            if not self._evaluate(trainer, pl_module, env_steps):
                # Lightning runs this update, then stops: these evaluations keep the weights from before it.
                self.pending = {"env_steps": due[i:],
                                "weights": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}}
                return

    def on_train_end(self, trainer, pl_module):
        if not self.envs:
            return
        while self.every and self.next_eval <= self.final:
            if not self._evaluate(trainer, pl_module, self.next_eval):
                raise FinalEvaluationInterrupted
            self.next_eval += self.every
        if not self.history or self.history[-1]["env_steps"] != self.final:
            if not self._evaluate(trainer, pl_module, self.final):
                raise FinalEvaluationInterrupted

    def _evaluate(self, trainer: pl.Trainer, pl_module, env_steps: int) -> bool:
        """Evaluate and log; False if a stop interrupted it (then nothing is recorded)."""
        stop = lambda: bool(getattr(trainer, "received_sigterm", False))  # noqa: E731
        run = lambda: evaluate(self.envs, pl_module.policy, self.seed, env_steps,  # noqa: E731
                               self.num_episodes, stop, pl_module.device)
        try:
            try:
                returns = run()
            except EvaluationInterrupted:
                raise
            except Exception as err:  # a renderer or simulator failure: rebuild the env, evaluate again once
                warnings.warn(f"evaluation environment crashed at env step {env_steps} ({err!r}); rebuilding it")
                self.env_restarts += 1
                self.envs = self.make_envs()
                returns = run()
        except EvaluationInterrupted:
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
        if not self.envs:
            return {}
        return {"next_eval": self.next_eval, "history": self.history, "env_restarts": self.env_restarts,
                "pending": self.pending}  # snapshots before this version held the evaluation env's state; unused

    def load_state_dict(self, state_dict: dict) -> None:
        if not self.envs:
            return
        self.next_eval, self.history = state_dict["next_eval"], state_dict["history"]
        self.env_restarts, self.pending = state_dict["env_restarts"], state_dict.get("pending")


def as_policy(pl_module) -> TensorDictModule:
    return TensorDictModule(pl_module.policy, in_keys=["pixels"], out_keys=["action"])
