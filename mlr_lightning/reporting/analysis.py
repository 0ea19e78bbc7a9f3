"""What MLR does to the latent space: the tested functions behind ``notebooks/latent_cosine_similarity.ipynb``.

The paper mentions a "latent cosine similarity" analysis without defining it; the definitions here are
ours. Raw cosines of these latents say little: the latents of one trajectory share a large common
component, so raw cosines sit near 1 for any encoder, trained or not (and prediction-target cosines
near 1 say only that both sit near that component). So every statistic here is computed on
*centred* latents, and every number comes with two references: the same statistic for an untrained
agent of the same architecture (:func:`untrained_like`), and for shuffled pairs.

1. :func:`cosine_similarity_matrix`: cosine between the centred latents (the trajectory's mean latent
   subtracted) at steps i and j of one trajectory: do the latents tell the states apart, and which
   states does the encoder treat as alike?
2. :func:`similarity_by_distance`: its mean over pairs d steps apart; the shuffled-pairs level is the
   mean over all pairs i != j (:func:`shuffled_pairs`). :func:`effective_dimensions` counts how many
   directions the centred latents spread over (participation ratio of their covariance spectrum).
3. :func:`masked_prediction_similarity` (MLR runs with a latent target only; a Baseline has no
   decoder): windows of K steps of the trajectory with their first temporal block masked by the run's
   own objective (``mlr/objective.py``: its masking strategy, space, geometry and ratio); the
   cosine between the decoder's prediction at each position and the momentum target of the unmasked
   window, both centred per position over the windows. It measures how well the prediction follows
   the target from window to window. Shuffled pairs: the target of another window that does not
   overlap; an untrained agent of the same architecture gives the chance level of the network itself.

Encoders: DMC (SAC) reads the critic's encoder on centre crops; Atari (Rainbow) the online network's
conv encoder, flattened (:func:`latents_of`).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from mlflow.entities import Run
from omegaconf import OmegaConf
from torch import Tensor
from torchrl.envs.utils import ExplorationType, set_exploration_type

from mlr_lightning.agents.base import RLAgent
from mlr_lightning.agents.rainbow_mlr import RainbowMLRAgent
from mlr_lightning.agents.sac_mlr import SACMLRAgent
from mlr_lightning.data.augment import center_crop
from mlr_lightning.domains import domain_of
from mlr_lightning.training.evaluation import as_policy
from mlr_lightning.training.snapshot import CHECKPOINTS, LAST_ARTIFACT


def find_run(client: MlflowClient, experiment: str, mlr: bool, run_id: str | None = None, task: str | None = None) -> Run:
    """``run_id`` if given, else the newest finished run with the ``mlr`` tag on/off (and ``task``)."""
    if run_id:
        return client.get_run(run_id)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment named {experiment!r}")
    query = f"tags.mlr = '{'on' if mlr else 'off'}' and attributes.status = 'FINISHED'"
    if task:
        query += f" and tags.task = '{task}'"
    runs = client.search_runs([exp.experiment_id], filter_string=query, order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise ValueError(f"no finished {'MLR' if mlr else 'Baseline'} run in experiment {experiment!r} ({query})")
    return runs[0]


def checkpoint_of(client: MlflowClient, run: Run, download_dir: str | Path | None = None) -> Path:
    """The run's final checkpoint: the uploaded artifact when there is one, else the recorded path."""
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, CHECKPOINTS)]
    if LAST_ARTIFACT in artifacts:
        return Path(client.download_artifacts(run.info.run_id, LAST_ARTIFACT, str(download_dir) if download_dir else None))
    return Path(run.data.tags["checkpoint_path"])


def load_agent(checkpoint: str | Path) -> RLAgent:
    """The trained agent of a Lightning checkpoint of either domain, on CPU, in eval mode."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    hparams = state["hyper_parameters"]  # the agent's constructor arguments: cfg and the action count
    agent = domain_of(OmegaConf.create(hparams["cfg"])).agent_class(**hparams)
    agent.load_state_dict(state["state_dict"])
    return agent.eval()


def untrained_like(agent: RLAgent, seed: int = 0) -> RLAgent:
    """A freshly initialised agent of the same architecture and config: the untrained reference."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return type(agent)(**agent.hparams).eval()


@torch.no_grad()
def collect_trajectory(agent: RLAgent, seed: int, max_steps: int = 1000) -> dict[str, Tensor]:
    """One deterministic evaluation episode of ``agent`` (at most ``max_steps`` agent steps):
    ``pixels`` [T, C, H, W] uint8 (stacked frames, as the agent sees them) and ``action`` [T, A]."""
    env = domain_of(agent.cfg).make_env(agent.cfg, seed, train=False)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        rollout = env.rollout(max_steps=max_steps, policy=as_policy(agent), break_when_any_done=True)
    env.close()
    return {"pixels": rollout["pixels"], "action": rollout["action"].float()}


# ------------------------------------------------------------------------------------ the encoders
class _SACLatents:
    """DMC (SAC+MLR): the critic's encoder (the one MLR trains) on centre crops, as the policy acts."""

    def __init__(self, agent: SACMLRAgent):
        self.agent, self.crop = agent, agent.cfg.env.crop_size

    def encode(self, pixels: Tensor) -> Tensor:
        return self.agent.critic.encoder(center_crop(pixels, self.crop))

    def view(self, frames: Tensor) -> Tensor:
        """Windows [N, K, C, H, W] as the MLR encoders see them here: centre crops (no augmentation)."""
        return center_crop(frames, self.crop)


class _RainbowLatents:
    """Atari (Rainbow+MLR): the online network's conv encoder, flattened."""

    def __init__(self, agent: RainbowMLRAgent):
        self.agent = agent

    def encode(self, pixels: Tensor) -> Tensor:
        return self.agent.online.encoder(pixels).flatten(1)

    def view(self, frames: Tensor) -> Tensor:
        return frames


# A reader per RL algorithm, by the domain's ``agent_name``: a new domain with a SAC or Rainbow agent needs none.
LATENT_READERS = {"sac": _SACLatents, "rainbow": _RainbowLatents}


def latents_of(agent: RLAgent) -> _SACLatents | _RainbowLatents:
    """How the analyses read an agent: ``encode`` (uint8 observations [N, C, H, W] -> latents [N, D])
    and ``view`` (windows [N, K, C, H, W] as the MLR objective's ``predict`` and ``target`` take them)."""
    algorithm = domain_of(agent.cfg).agent_name
    if algorithm not in LATENT_READERS:
        raise TypeError(f"no latent reader for {algorithm} agents ({type(agent).__name__})")
    return LATENT_READERS[algorithm](agent)


@torch.no_grad()
def encode(agent: RLAgent, pixels: Tensor) -> Tensor:
    """Latents of the encoder MLR trains: uint8 [T, C, H, W] -> [T, D]."""
    return latents_of(agent).encode(pixels)


# ---------------------------------------------------------------------- 1-2: latents along a trajectory
def centre(latents: Tensor) -> Tensor:
    """Subtract the mean latent over the trajectory (the component every latent shares)."""
    latents = latents.float()
    return latents - latents.mean(0)


def cosine_similarity_matrix(latents: Tensor, centred: bool = True) -> np.ndarray:
    """[T, D] -> [T, T] cosine similarities, of the centred latents unless ``centred=False``."""
    z = F.normalize(centre(latents) if centred else latents.float(), dim=-1)
    return (z @ z.T).numpy()


def similarity_by_distance(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean similarity of latent pairs ``d`` steps apart, for d = 0 .. T-1."""
    distances = np.arange(matrix.shape[0])
    return distances, np.array([np.diagonal(matrix, offset=d).mean() for d in distances])


def shuffled_pairs(matrix: np.ndarray) -> float:
    """The shuffled-pairs reference: the mean similarity of two distinct steps drawn at random."""
    return float(matrix[~np.eye(matrix.shape[0], dtype=bool)].mean())


def effective_dimensions(latents: Tensor) -> float:
    """Participation ratio (sum λ)² / sum λ² of the centred latents' covariance eigenvalues λ: from 1
    (every latent on one line) to D (spread evenly over all D directions)."""
    eigenvalues = torch.linalg.svdvals(centre(latents)) ** 2
    return float(eigenvalues.sum() ** 2 / (eigenvalues**2).sum())


def latent_summary(latents: dict[str, Tensor]) -> pd.DataFrame:
    """Per encoder: centred cosine of neighbours (d = 1) and of shuffled pairs, the raw (uncentred)
    cosine of shuffled pairs, and the effective dimensions."""
    rows = {}
    for label, z in latents.items():
        centred, raw = cosine_similarity_matrix(z), cosine_similarity_matrix(z, centred=False)
        rows[label] = {"neighbours (d=1)": float(np.diagonal(centred, 1).mean()), "shuffled pairs": shuffled_pairs(centred),
                       "uncentred: shuffled pairs": shuffled_pairs(raw), "effective dimensions": effective_dimensions(z)}
    return pd.DataFrame(rows).T


# --------------------------------------------------------------------------- 3: masked-latent prediction
@torch.no_grad()
def masked_prediction_similarity(agent: RLAgent, trajectory: dict[str, Tensor], seed: int = 0,
                                 max_windows: int = 256) -> dict:
    """Centred cosine(prediction, momentum target) of K-step windows whose first temporal block is masked.

    Windows start at up to ``max_windows`` evenly spaced steps. Returns ``per_position`` [K] (mean over
    windows), ``masked`` and ``unmasked`` (means over the first block / the rest), the same for
    shuffled pairs (``shuffled_masked``, ``shuffled_unmasked``: each prediction against the target of
    a window that does not overlap it), the uncentred cosines (``raw_masked``, ``raw_unmasked``) and
    ``windows``.
    """
    if not agent.mlr.enabled:
        raise ValueError("a Baseline agent has no MLR decoder to predict with")
    if agent.mlr.target != "latent":
        raise ValueError(f"mlr.target={agent.mlr.target} predicts pixels, not latents: nothing to compare with a target latent")
    reader, mlr, objective = latents_of(agent), agent.mlr, agent.objective
    k, block = mlr.seq_len, mlr.block_size
    pixels, actions = trajectory["pixels"], trajectory["action"]
    steps = pixels.shape[0]
    if steps < 2 * k:
        raise ValueError(f"the trajectory ({steps} steps) is shorter than two windows ({2 * k}): the shuffled "
                         "reference needs windows that do not overlap")
    starts = np.unique(np.linspace(0, steps - k, min(max_windows, steps - k + 1)).round().astype(int))
    index = torch.as_tensor(starts)[:, None] + torch.arange(k)
    frames, acts = pixels[index], actions[index]  # [N, K, C, H, W], [N, K, A]
    mask = objective.mask(frames, generator=torch.Generator().manual_seed(seed))  # [(N,) K, 1, H, W]
    mask = mask & (torch.arange(k) < block)[:, None, None, None]  # only the first temporal block is masked
    online, features_masked = objective.masked_input(frames, mask)
    prediction = objective.predict(reader.view(online), acts, features_masked)
    target = objective.target(reader.view(frames))
    matched = _centred_cosine(prediction, target)  # [N, K]
    shuffled = _centred_cosine(prediction, target[_non_overlapping_partners(starts, k, seed)])
    raw = F.cosine_similarity(prediction.float(), target.float(), dim=-1)

    def split(values: Tensor) -> tuple[float, float]:
        return float(values[:, :block].mean()), float(values[:, block:].mean())

    result = {"per_position": matched.mean(0).numpy(), "windows": len(starts)}
    for name, values in (("", matched), ("shuffled_", shuffled), ("raw_", raw)):
        result[f"{name}masked"], result[f"{name}unmasked"] = split(values)
    return result


def _centred_cosine(prediction: Tensor, target: Tensor) -> Tensor:
    """Cosine of [N, K, D] predictions and targets, each centred per position over the N windows."""
    p, t = prediction.float(), target.float()
    return F.cosine_similarity(p - p.mean(0), t - t.mean(0), dim=-1)


def _non_overlapping_partners(starts: np.ndarray, k: int, seed: int) -> Tensor:
    """For each window, a random other window at least ``k`` steps away."""
    rng = np.random.default_rng(seed)
    partners = [rng.choice(np.flatnonzero(np.abs(starts - s) >= k)) for s in starts]
    return torch.as_tensor(np.array(partners))


def reconstruction_table(results: dict[str, dict]) -> pd.DataFrame:
    """Rows: each agent's matched pairs and shuffled pairs; columns: masked / unmasked positions."""
    rows = {}
    for label, r in results.items():
        rows[f"{label}: prediction vs its target"] = [r["masked"], r["unmasked"]]
        rows[f"{label}: shuffled pairs"] = [r["shuffled_masked"], r["shuffled_unmasked"]]
        rows[f"{label}: uncentred (for contrast)"] = [r["raw_masked"], r["raw_unmasked"]]
    return pd.DataFrame(rows, index=["masked (first block)", "unmasked (rest)"]).T


# ----------------------------------------------------------------------------------------- figures
def plot_similarity_matrices(matrices: dict[str, np.ndarray]):
    """One panel per encoder on one colour scale, symmetric about 0 and set by the largest
    off-diagonal |value| of the panels (the diagonal is 1 by definition)."""
    limit = max(np.abs(m[~np.eye(m.shape[0], dtype=bool)]).max() for m in matrices.values())
    fig, axes = plt.subplots(1, len(matrices), figsize=(4.5 * len(matrices), 4), squeeze=False)
    for ax, (label, m) in zip(axes[0], matrices.items()):
        image = ax.imshow(m, vmin=-limit, vmax=limit, cmap="RdBu_r")
        ax.set(title=f"{label}\ncentred latent cosine similarity", xlabel="time step", ylabel="time step")
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def plot_similarity_by_distance(matrices: dict[str, np.ndarray], max_distance: int | None = None):
    """Mean centred similarity against temporal distance per encoder; dashed: its shuffled-pairs level."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, m in matrices.items():
        d, s = similarity_by_distance(m)
        end = max_distance or len(d) // 2  # beyond half the trajectory few pairs remain
        (line,) = ax.plot(d[:end], s[:end], label=label)
        ax.axhline(shuffled_pairs(m), color=line.get_color(), linestyle="--", linewidth=1)
    ax.set(xlabel="temporal distance (agent steps)", ylabel="mean centred cosine similarity",
           title="similarity vs temporal distance (dashed: shuffled pairs)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
