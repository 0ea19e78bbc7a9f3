"""A guard every agent calls once per update: stop on the first non-finite loss."""

from __future__ import annotations

import torch
from torch import Tensor


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or Inf; the message names the update and the first such loss (in update
    order, the one that caused the others)."""

    def __init__(self, update: int, names: list[str]):
        self.update, self.names = update, names
        after = f" (then {', '.join(names[1:])})" if len(names) > 1 else ""
        super().__init__(f"non-finite {names[0]} at update {update}{after}")


def check_finite(metrics: dict[str, Tensor], update: int) -> None:
    """One device sync per update for all losses together (in the order they were computed)."""
    values = torch.stack([torch.as_tensor(v, dtype=torch.float32).reshape(()) for v in metrics.values()])
    if not bool(torch.isfinite(values).all()):
        bad = [name for name, v in zip(metrics, values.tolist()) if not torch.isfinite(torch.tensor(v))]
        raise NonFiniteLossError(update, bad)
