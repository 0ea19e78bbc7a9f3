"""What MLR does to the latent space: the tested functions behind ``notebooks/``.

The paper mentions a "latent cosine similarity" analysis without defining it precisely; it is
defined concretely here, always comparing an MLR run with a Baseline run on the *same* trajectory:
1. ``cosine_similarity_matrix``: pairwise cosine similarity of the online encoder's latents along a
   trajectory (does the representation tell distinct states apart, or collapse?);
2. ``similarity_by_distance``: that similarity as a function of temporal distance;
3. ``masked_prediction_similarity``: cosine similarity between the decoder's predictions for a
   masked window and the momentum-target latents, at the masked and the unmasked positions.
   For (3) only the first temporal block of each window is masked (with the agent's cube
   geometry and ratio), so positions are cleanly "masked" or "unmasked"; Baseline runs have no
   decoder, so (3) exists for MLR runs only.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from mlflow.entities import Run
from torch import Tensor

from mlr_lightning.agents.sac_mlr import SACMLRAgent
from mlr_lightning.data.augment import center_crop
from mlr_lightning.mlr.masking import apply_mask, cube_mask
from mlr_lightning.training.evaluation import as_policy, deterministic_episode


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
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    if "checkpoints/last.ckpt" in artifacts:
        return Path(client.download_artifacts(run.info.run_id, "checkpoints/last.ckpt", str(download_dir) if download_dir else None))
    return Path(run.data.tags["checkpoint_path"])


def load_agent(checkpoint: str | Path) -> SACMLRAgent:
    agent = SACMLRAgent.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False)
    return agent.eval()


@torch.no_grad()
def collect_trajectory(agent: SACMLRAgent, seed: int) -> dict[str, Tensor]:
    """One deterministic episode of ``agent``: ``pixels`` [T, 3S, H, W] uint8 and ``action`` [T, A]."""
    from mlr_lightning.domains import domain_of

    env = domain_of(agent.cfg).make_env(agent.cfg, seed, train=False)
    rollout = deterministic_episode(env, as_policy(agent))
    env.close()
    return {"pixels": rollout["pixels"], "action": rollout["action"]}


@torch.no_grad()
def encode(agent: SACMLRAgent, pixels: Tensor) -> Tensor:
    """Online (critic) encoder latents of centre-cropped frames: [T, 3S, H, W] -> [T, D]."""
    return agent.critic.encoder(center_crop(pixels, agent.cfg.env.crop_size))


def cosine_similarity_matrix(latents: Tensor) -> np.ndarray:
    z = F.normalize(latents.float(), dim=-1)
    return (z @ z.T).numpy()  # [T, T]


def similarity_by_distance(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean similarity of latent pairs ``d`` steps apart, for d = 0 .. T-1."""
    distances = np.arange(matrix.shape[0])
    return distances, np.array([np.diagonal(matrix, offset=d).mean() for d in distances])


@torch.no_grad()
def masked_prediction_similarity(agent: SACMLRAgent, trajectory: dict[str, Tensor], seed: int = 0) -> dict[str, np.ndarray]:
    """Cosine(prediction, momentum target) per window position, the first temporal block masked.

    Returns ``per_position`` [K] (mean over windows), ``masked`` and ``unmasked`` (scalars).
    """
    if not agent.mlr.enabled:
        raise ValueError("a Baseline agent has no MLR decoder to predict with")
    mlr, env = agent.mlr, agent.cfg.env
    k, crop = mlr.seq_len, env.crop_size
    pixels, actions = trajectory["pixels"], trajectory["action"]
    n = pixels.shape[0] // k
    if n == 0:
        raise ValueError(f"the trajectory ({pixels.shape[0]} steps) is shorter than one window ({k})")
    frames = pixels[: n * k].reshape(n, k, *pixels.shape[1:])  # [N, K, 3S, H, W]
    acts = actions[: n * k].reshape(n, k, -1)
    mask = cube_mask(k, env.image_size, mlr.patch_size, mlr.block_size, mlr.mask_ratio,
                     generator=torch.Generator().manual_seed(seed))
    mask[mlr.block_size :] = False  # only the first temporal block is masked
    online = center_crop(apply_mask(frames, mask), crop).flatten(0, 1)
    target_in = center_crop(frames, crop).flatten(0, 1)
    states = agent.critic.encoder(online).view(n, k, -1)
    prediction = agent.prediction(agent.projection(agent.decoder(states, acts)))
    target = agent.target_projection(agent.target_encoder(target_in)).view(n, k, -1)
    per_position = F.cosine_similarity(prediction, target, dim=-1).mean(0).numpy()  # [K]
    return {"per_position": per_position, "masked": per_position[: mlr.block_size].mean(),
            "unmasked": per_position[mlr.block_size :].mean()}


def plot_similarity_matrices(matrices: dict[str, np.ndarray]):
    fig, axes = plt.subplots(1, len(matrices), figsize=(5 * len(matrices), 4), squeeze=False)
    for ax, (label, m) in zip(axes[0], matrices.items()):
        image = ax.imshow(m, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set(title=f"{label}: latent cosine similarity", xlabel="time step", ylabel="time step")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def plot_similarity_by_distance(curves: dict[str, tuple[np.ndarray, np.ndarray]]):
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (d, s) in curves.items():
        ax.plot(d, s, label=label)
    ax.set(xlabel="temporal distance (agent steps)", ylabel="mean cosine similarity", title="similarity vs temporal distance")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
