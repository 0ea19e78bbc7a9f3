"""Representation probe: how much of the simulator's physical state a run's encoder makes linearly readable.

The paper evaluates representations with a regression accuracy test; the definitions here are ours.

1. :func:`collect_states` plays ``episodes`` episodes of a stated behaviour policy (uniformly random
   actions from ``numpy.random.default_rng(seed)``, the environment seeded ``seed``) on the run's task
   and keeps each observation the agent would see (uint8 frame stacks) with the physical state after
   that step (:func:`physical_state`): the simulator's joint positions, each hinge angle as its cosine
   and sine (an angle is unbounded: a swinging pole winds up), and its generalised velocities.
2. Each encoder maps the frames to latents (DMC: the critic's encoder on centre crops, the one MLR
   trains; :func:`mlr_lightning.reporting.analysis.encode`).
3. :func:`ridge_probe` standardises latents and states on the training episodes (the first
   ``1 - test_fraction`` of them; whole episodes are held out, as neighbouring frames are near copies),
   fits a ridge regression latents -> states there, and reports the held-out R² per state dimension
   (1 - SSE / SST around the held-out mean, so a constant prediction scores <= 0) and its average over
   dimensions, with a 95 % percentile bootstrap interval over held-out frames.

References: the same probe on untrained encoders of the same architecture (several initialisations),
and a shuffled-state control (training states permuted against their frames), which has nothing to
learn and scores R² <= 0. Atari has no simulator state to regress, so :func:`check_probeable` refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from mlr_lightning.agents.base import RLAgent
from mlr_lightning.domains import domain_of
from mlr_lightning.reporting.analysis import encode, load_agent, untrained_like
from mlr_lightning.training.snapshot import model_checkpoint

BEHAVIOUR = "uniformly random actions"
FREE, BALL, SLIDE, HINGE = 0, 1, 2, 3  # MuJoCo's mjtJoint


class ProbeError(ValueError):
    pass


@dataclass
class StateSamples:
    pixels: Tensor  # [N, C, H, W] uint8, the stacked observations the agent acts on
    states: np.ndarray  # [N, P + V]: qpos then qvel after the step that produced the observation
    episode: np.ndarray  # [N] episode index, for the held-out split
    names: list[str]  # one per state column: qpos[i] / qvel[i]


def check_probeable(agent: RLAgent) -> None:
    if not domain_of(agent.cfg).has_physics:
        raise ProbeError(f"the probe regresses dm_control simulator states, which this run's domain "
                         f"({agent.cfg.domain}) does not have (ALE exposes RAM bytes, not physical states)")


@torch.no_grad()
def collect_states(agent: RLAgent, seed: int = 0, episodes: int = 8, max_steps: int | None = None) -> StateSamples:
    """``episodes`` episodes of uniformly random actions (at most ``max_steps`` agent steps each) on the
    run's task, environment seeded ``seed``: frames and the physical state after each step."""
    check_probeable(agent)
    env = domain_of(agent.cfg).make_env(agent.cfg, seed, train=False)
    physics = env.game._env.physics  # the dm_control environment under the pixel and action-repeat wrapper
    low, high = env.action_spec.space.low.numpy(), env.action_spec.space.high.numpy()
    rng = np.random.default_rng(seed)
    pixels, states, episode = [], [], []
    for e in range(episodes):
        td = env.reset()
        for _ in range(max_steps or 10**9):
            td["action"] = torch.as_tensor(rng.uniform(low, high), dtype=torch.float32)
            td = env.step(td)["next"]
            pixels.append(td["pixels"].clone())
            states.append(physical_state(physics))
            episode.append(e)
            if td["done"].item():
                break
    env.close()
    return StateSamples(torch.stack(pixels), np.array(states), np.array(episode), state_names(physics))


def _joints(physics) -> list[tuple[str, int, int]]:
    """(name, type, first qpos index) of every joint; a hinge angle is unbounded (a pole swings round)."""
    model = physics.model
    return [(model.id2name(j, "joint") or f"joint{j}", int(model.jnt_type[j]), int(model.jnt_qposadr[j]))
            for j in range(model.njnt)]


def physical_state(physics) -> np.ndarray:
    """Positions (each hinge angle as its cos and sin, slide joints as they are, other joints' raw
    coordinates), then every generalised velocity (``qvel``)."""
    qpos, parts = physics.data.qpos, []
    for _, kind, start in _joints(physics):
        if kind == HINGE:
            parts += [np.cos(qpos[start]), np.sin(qpos[start])]
        elif kind == SLIDE:
            parts.append(qpos[start])
        else:
            parts.extend(qpos[start : start + (7 if kind == FREE else 4)])
    return np.concatenate([np.array(parts, dtype=np.float64), physics.data.qvel]).copy()


def state_names(physics) -> list[str]:
    names = []
    for name, kind, _ in _joints(physics):
        names += ([f"cos {name}", f"sin {name}"] if kind == HINGE else [name] if kind == SLIDE
                  else [f"{name}[{i}]" for i in range(7 if kind == FREE else 4)])
    return names + [f"d/dt {physics.model.id2name(physics.model.dof_jntid[i], 'joint') or i}[{i}]"
                    for i in range(physics.model.nv)]


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 1e-8, std, 1.0)  # a constant column stays constant (0), not NaN
    return (train - mean) / std, (test - mean) / std


def r2_per_dim(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """[N, D] -> [D]: 1 - SSE / SST around the held-out mean."""
    sse = ((truth - prediction) ** 2).sum(0)
    sst = ((truth - truth.mean(0)) ** 2).sum(0)
    return 1.0 - sse / np.maximum(sst, 1e-12)


def ridge_probe(latents: np.ndarray, samples: StateSamples, alpha: float = 1.0, test_fraction: float = 0.25,
                reps: int = 1000, seed: int = 0, shuffle_states: bool = False) -> dict:
    """Held-out R² of a ridge regression latents [N, D] -> standardised states [N, S].

    Returns ``r2`` [S] per state dimension, ``mean`` (over dimensions) and its bootstrap ``ci`` (low,
    high), and ``train``/``test`` frame counts. ``shuffle_states`` permutes the training states (the
    control: no relation left to learn).
    """
    episodes = np.unique(samples.episode)
    n_test = max(1, int(round(test_fraction * len(episodes))))
    if len(episodes) - n_test < 1:
        raise ProbeError(f"{len(episodes)} episodes leave none to train on with test_fraction={test_fraction}")
    test = np.isin(samples.episode, episodes[-n_test:])
    keep = samples.states[~test].std(0) > 1e-8  # state dimensions that vary (a fixed joint teaches nothing)
    x_train, x_test = _standardise(latents[~test].astype(np.float64), latents[test].astype(np.float64))
    y_train, y_test = _standardise(samples.states[~test][:, keep], samples.states[test][:, keep])
    rng = np.random.default_rng(seed)
    if shuffle_states:
        y_train = y_train[rng.permutation(len(y_train))]
    d = x_train.shape[1]
    weights = np.linalg.solve(x_train.T @ x_train + alpha * np.eye(d), x_train.T @ y_train)  # [D, S]
    prediction = x_test @ weights
    r2 = r2_per_dim(y_test, prediction)
    picks = rng.integers(0, len(y_test), size=(reps, len(y_test)))
    means = np.array([r2_per_dim(y_test[p], prediction[p]).mean() for p in picks])
    return {"r2": pd.Series(r2, index=[n for n, k in zip(samples.names, keep) if k]), "mean": float(r2.mean()),
            "ci": (float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))),
            "train": int((~test).sum()), "test": int(test.sum())}


def probe_agents(agents: dict[str, RLAgent], samples: StateSamples, untrained: int = 3, alpha: float = 1.0,
                 reps: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per encoder: each agent, ``untrained`` fresh initialisations of the first one's architecture,
    and the shuffled-state control on the first agent; columns: mean held-out R², its CI, R² per dimension."""
    first = next(iter(agents.values()))
    encoders = dict(agents) | {f"untrained (init {i})": untrained_like(first, seed=i) for i in range(untrained)}
    rows = {}
    for label, agent in encoders.items():
        rows[label] = ridge_probe(encode(agent, samples.pixels).numpy(), samples, alpha, reps=reps, seed=seed)
    control = f"{next(iter(agents))}, shuffled states (control)"
    rows[control] = ridge_probe(encode(first, samples.pixels).numpy(), samples, alpha, reps=reps, seed=seed,
                                shuffle_states=True)
    return pd.DataFrame({label: {"mean R²": r["mean"], "ci_low": r["ci"][0], "ci_high": r["ci"][1], "train": r["train"],
                                 "test": r["test"], **{f"R² {k}": v for k, v in r["r2"].items()}}
                         for label, r in rows.items()}).T


def checkpoint_in(run: str | Path) -> Path:
    """A run directory (its newest weights) or a checkpoint file -> the checkpoint file."""
    checkpoint = model_checkpoint(run)
    if checkpoint is None:
        problem = "a directory without a checkpoint" if Path(run).is_dir() else "not a file"
        raise ProbeError(f"--runs {run} is {problem}; give a run directory that fit wrote, or a checkpoint")
    return checkpoint


def label_of(agent: RLAgent, run: str | Path) -> str:
    return f"{Path(run).name} ({'MLR' if agent.cfg.mlr.enabled else 'Baseline'})"


def probe_runs(runs: list[str | Path], seed: int = 0, episodes: int = 8, untrained: int = 3, alpha: float = 1.0,
               reps: int = 1000) -> pd.DataFrame:
    """:func:`probe_agents` over the encoders of ``runs`` (run directories or checkpoints) of one DMC task."""
    agents = {}
    for run in runs:
        agent = load_agent(checkpoint_in(run))
        check_probeable(agent)
        agents[label_of(agent, run)] = agent
    tasks = {a.cfg.env.task for a in agents.values()}
    if len(tasks) > 1:
        raise ProbeError(f"--runs are of different tasks ({', '.join(sorted(tasks))}); the probe compares encoders on "
                         "one task's frames: probe each task separately")
    samples = collect_states(next(iter(agents.values())), seed, episodes)
    return probe_agents(agents, samples, untrained, alpha, reps, seed)
