"""Learning-rate schedules."""

from __future__ import annotations

import math


def inverse_sqrt_schedule(warmup_steps: int, init_factor: float):
    """LR factor: linear from ``init_factor`` to 1 over ``warmup_steps`` updates, then sqrt(warmup / step)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return init_factor + (1.0 - init_factor) * step / warmup_steps
        return math.sqrt(warmup_steps / step)

    return factor
