"""Figures: learning curves with confidence bands, performance profiles, episode GIFs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt  # without a display matplotlib picks its headless Agg backend itself
import numpy as np
from PIL import Image


def learning_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], path: Path,
                    title: str, ylabel: str = "evaluation return") -> Path:
    """``curves[label] = (env_steps, mean, low, high)``: a line per label with its band."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (steps, mean, low, high) in curves.items():
        ax.plot(steps, mean, label=label)
        ax.fill_between(steps, low, high, alpha=0.2)
    ax.set(xlabel="environment steps", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def episode_gif(frames: np.ndarray, path: Path, fps: int = 25) -> Path:
    """frames ``[T, H, W, 3]`` uint8 -> looping GIF."""
    images = [Image.fromarray(np.asarray(f)) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


def performance_profiles(profiles: Mapping[str, np.ndarray], cis: Mapping[str, np.ndarray], taus: Sequence[float],
                         path: Path, xlabel: str, title: str | None = None) -> Path:
    from rliable import plot_utils

    fig, ax = plt.subplots(figsize=(6, 4))
    plot_utils.plot_performance_profiles(profiles, np.asarray(taus), performance_profile_cis=cis, ax=ax, xlabel=xlabel)
    ax.legend(ax.get_lines()[: len(profiles)], list(profiles))  # one line per algorithm, in order
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
