"""A guard every agent calls once per update: stop on the first non-finite loss."""

from __future__ import annotations

import torch
from torch import Tensor


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or Inf; the message names the update and the losses."""

    def __init__(self, update: int, names: list[str]):
        self.update, self.names = update, names
        super().__init__(f"non-finite {', '.join(names)} at update {update}")


def check_finite(metrics: dict[str, Tensor], update: int) -> None:
    """One device sync per update for all metrics together, then names the offending ones."""
    values = torch.stack([torch.as_tensor(v, dtype=torch.float32).reshape(()) for v in metrics.values()])
    if not bool(torch.isfinite(values).all()):
        bad = [name for name, v in zip(metrics, values.tolist()) if not torch.isfinite(torch.tensor(v))]
        raise NonFiniteLossError(update, bad)
