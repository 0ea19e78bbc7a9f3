"""What every agent shares: the update counter, the finite-loss guard, logging and named optimizers.

Agents optimise manually (several losses with their own optimizers on DMC, gradient clipping per
parameter group on Atari); Lightning still owns devices, precision, gradient scaling, DDP and
checkpoints, which is why every step goes through :meth:`RLAgent.step`.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDictBase
from torch import Tensor
from torchrl import timeit


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
        bad = [name for name, v in zip(metrics, values.tolist()) if not math.isfinite(v)]
        raise NonFiniteLossError(update, bad)


class DivergedError(FloatingPointError):
    """Parameters became non-finite or implausibly large: the run diverged, though its losses may
    still be finite (a huge log-temperature, say). Raised before such a state is called a good snapshot."""


def check_parameters(module: torch.nn.Module, max_abs: float, update: int) -> None:
    """Raise :class:`DivergedError` naming the first parameter that is non-finite or exceeds ``max_abs``."""
    for name, param in module.named_parameters():
        peak = param.detach().abs().max()
        if not bool(torch.isfinite(peak)) or float(peak) > max_abs:
            raise DivergedError(f"parameter {name} reached {float(peak):.3g} at update {update} "
                                f"(trainer.max_abs_weight={max_abs:g}): the run diverged")


class RLAgent(pl.LightningModule):
    """Base of the agents. Subclasses build their networks, name their optimizers (in the order
    ``configure_optimizers`` returns them) and call :meth:`finish_update` at the end of each update."""

    optimizer_names: tuple[str, ...] = ()
    progress_bar_metrics: tuple[str, ...] = ()

    def __init__(self, cfg: DictConfig | dict, **hparams):
        super().__init__()
        cfg = OmegaConf.create(cfg)
        self.save_hyperparameters({"cfg": OmegaConf.to_container(cfg, resolve=True), **hparams})
        self.cfg = cfg
        self.automatic_optimization = False
        # Updates done so far; a buffer so that it is checkpointed (schedules depend on it).
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def optimizer(self, name: str) -> LightningOptimizer:
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        return optimizers[self.optimizer_names.index(name)]

    def on_train_start(self) -> None:
        """A resume restores the optimisers' states, learning rates included; a resume that changes an
        optimiser setting on purpose (``--allow-change``) must see it applied."""
        self.apply_optimizer_settings()

    def apply_optimizer_settings(self) -> None:
        """Set the configured learning rates (and betas/eps) on the optimisers, where they differ."""

    def step(self, optimizer: LightningOptimizer, loss: Tensor) -> None:
        """zero_grad, backward and step, through Lightning (precision, gradient scaling, DDP)."""
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()

    def finish_update(self, metrics: dict[str, Tensor], batch: TensorDictBase) -> None:
        """Stop on a non-finite loss, count the update, log its metrics on the env-step axis."""
        check_finite({k: v for k, v in metrics.items() if k.endswith("loss")}, int(self.num_updates))
        self.num_updates += 1
        shown = {k: v for k, v in metrics.items() if k in self.progress_bar_metrics}
        self.log_dict(shown, on_step=True, on_epoch=False, prog_bar=True)
        self.log_dict({k: v for k, v in metrics.items() if k not in shown}, on_step=True, on_epoch=False)
        self.log("env_steps", float(batch["env_steps"]), prog_bar=True, on_step=True, on_epoch=False)
        if "beta" in batch.keys():
            self.log("train/beta", float(batch["beta"]), on_step=True, on_epoch=False)
        if not math.isnan(float(batch["episode_return"])):
            self.log("train/episode_return", float(batch["episode_return"]), prog_bar=True, on_step=True, on_epoch=False)
        if int(self.num_updates) % self.trainer.log_every_n_steps == 0:
            # Where the time goes (seconds per call since the last report), as TorchRL's SOTA scripts.
            self.log_dict(timeit.todict(prefix="time"), on_step=True, on_epoch=False)
            timeit.erase()
