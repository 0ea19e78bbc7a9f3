"""MLR's learning-rate warm-up on DMC (an inverse-square-root schedule), and how much of it a run sees.

Returns numbers only; the command line turns a shortfall into its note.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def inverse_sqrt_schedule(warmup_steps: int, init_factor: float):
    """LR factor: linear from ``init_factor`` to 1 over ``warmup_steps`` updates, then sqrt(warmup / step)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return init_factor + (1.0 - init_factor) * step / warmup_steps
        return math.sqrt(warmup_steps / step)

    return factor


@dataclass(frozen=True)
class WarmupShortfall:
    """A run of ``updates`` MLR updates, shorter than the warm-up of ``warmup_steps``: the LR factor it
    averages and ends at, and a shorter warm-up (half the run) with the average that one would give."""

    updates: int
    warmup_steps: int
    mean_factor: float
    end_factor: float
    shorter_warmup: int
    shorter_mean_factor: float


def warmup_shortfall(updates: int, warmup_steps: int, init_factor: float) -> WarmupShortfall | None:
    """None when the run reaches the end of the warm-up (or makes no MLR update)."""
    if updates >= warmup_steps or updates == 0:
        return None
    mean, end = _mean_factor(warmup_steps, init_factor, updates)
    shorter = max(1, updates // 2)
    return WarmupShortfall(updates, warmup_steps, mean, end, shorter, _mean_factor(shorter, init_factor, updates)[0])


def _mean_factor(warmup: int, init_factor: float, updates: int) -> tuple[float, float]:
    """The LR factor averaged over ``updates`` updates, and its value at the last one."""
    factor = inverse_sqrt_schedule(warmup, init_factor)
    return sum(factor(step) for step in range(updates)) / updates, factor(updates - 1)
