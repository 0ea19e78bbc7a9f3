"""What every agent shares: the update counter, the finite-loss guard, logging, named optimizers, the
batch's way onto the device and the compiled networks.

Agents optimise manually (several losses with their own optimizers on DMC, gradient clipping per
parameter group on Atari); Lightning still owns devices, precision, gradient scaling, DDP and
checkpoints, which is why every step goes through :meth:`RLAgent.step`.

The update never waits for the device except where a value must reach the host: the finite-loss
guard (every ``trainer.finite_check_every`` updates), and Lightning's loggers when they write. The
host scalars of a batch (``env_steps``, ``episode_return``, ``beta``) stay on the host.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDictBase
from torch import Tensor, nn
from torchrl import timeit

from mlr_lightning.data.frames import assemble_stacks

HOST_KEYS = ("env_steps", "episode_return", "beta")  # batch scalars that the host reads: never moved


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or Inf; the message names the update and the first such loss (in update
    order, the one that caused the others)."""

    def __init__(self, update: int, names: list[str]):
        self.update, self.names = update, names
        after = f" (then {', '.join(names[1:])})" if len(names) > 1 else ""
        super().__init__(f"non-finite {names[0]} at update {update}{after}")


class FiniteGuard:
    """Remembers, on the device, the first update at which each loss was not finite; :meth:`check`
    (one device synchronisation) raises :class:`NonFiniteLossError` for the earliest such update,
    naming its non-finite losses in the order they were computed."""

    def __init__(self):
        self.first: dict[str, Tensor] = {}  # loss name -> first non-finite update, -1 while finite

    def record(self, losses: dict[str, Tensor], update: int) -> None:
        values = torch.stack([torch.as_tensor(v).detach().float().reshape(()) for v in losses.values()])
        bad = ~torch.isfinite(values)
        for i, name in enumerate(losses):
            first = self.first.get(name)
            if first is None:
                first = torch.full((), -1, dtype=torch.long, device=values.device)
            self.first[name] = torch.where((first < 0) & bad[i], update, first)

    def check(self) -> None:
        if not self.first:
            return
        first = dict(zip(self.first, torch.stack(list(self.first.values())).tolist()))
        bad = [update for update in first.values() if update >= 0]
        if bad:
            raise NonFiniteLossError(min(bad), [name for name, update in first.items() if update == min(bad)])


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
    ``configure_optimizers`` returns them), list the networks to compile (:meth:`compiled_networks`)
    and call :meth:`finish_update` at the end of each update."""

    optimizer_names: tuple[str, ...] = ()
    progress_bar_metrics: tuple[str, ...] = ()

    def __init__(self, cfg: DictConfig | dict, **hparams):
        super().__init__()
        cfg = OmegaConf.create(cfg)
        self.save_hyperparameters({"cfg": OmegaConf.to_container(cfg, resolve=True), **hparams})
        self.cfg = cfg
        self.automatic_optimization = False
        # Updates done so far; a buffer so that it is checkpointed (schedules depend on it). The host
        # keeps its own copy (``updates``), so that reading it never waits for the device.
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._updates: int | None = None
        self._host: dict[str, float] = {}
        self._finite = FiniteGuard()

    @property
    def updates(self) -> int:
        """Updates done so far (the host's copy of ``num_updates``)."""
        if self._updates is None:  # once per run, after construction or a checkpoint load
            self._updates = int(self.num_updates)
        return self._updates

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._updates = None

    def optimizer(self, name: str) -> LightningOptimizer:
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        return optimizers[self.optimizer_names.index(name)]

    def adam(self, params, **kwargs) -> torch.optim.Adam:
        """Adam with torch's fused kernel on a CUDA GPU (one launch for all parameters), except under
        16-mixed, whose gradient scaler must unscale before the agents clip (Lightning cannot with a
        fused optimizer); elsewhere torch's default implementation, so CPU runs keep their numbers."""
        fused = self.device.type == "cuda" and (self._trainer is None or self.trainer.precision != "16-mixed")
        return torch.optim.Adam(params, fused=True if fused else None, **kwargs)

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

    # ------------------------------------------------------------------------- batch to device
    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """Everything but the host scalars goes to ``device``; frames already there stay."""
        if not isinstance(batch, TensorDictBase):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        host = {key: batch[key] for key in HOST_KEYS if key in batch.keys()}
        self._host = {key: float(value) for key, value in host.items()}  # host tensors: no synchronisation
        moved = batch.exclude(*host).to(device, non_blocking=True).clear_device_()
        moved.update(host)
        return moved

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Stacks of a deduplicated batch are built here, on the training device."""
        with timeit("data/assemble_stacks"):
            return assemble_stacks(batch) if isinstance(batch, TensorDictBase) else batch

    # --------------------------------------------------------------------------- compilation
    def compiled_networks(self) -> list[nn.Module]:
        """The modules that ``trainer.compile`` compiles (each in place, so checkpoints keep their keys)."""
        return []

    def setup(self, stage: str) -> None:
        trainer_cfg = self.cfg.get("trainer", {})
        self.compile_networks(trainer_cfg.get("compile", False), trainer_cfg.get("cudagraphs", False))

    def compile_networks(self, mode: bool | str, cudagraphs: bool = False) -> None:
        """``torch.compile`` every network of :meth:`compiled_networks`: ``mode`` false (nothing),
        true/"default" or "max-autotune"; ``cudagraphs`` adds CUDA graphs (torch's "reduce-overhead"
        and "max-autotune" modes). Random ops keep eager's generator and order (inductor's
        ``fallback_random``), so a compiled update draws the same noise as the eager one."""
        if mode is False:
            return
        import torch._inductor.config as inductor_config

        inductor_config.fallback_random = True
        if mode in (True, "default"):
            mode = "reduce-overhead" if cudagraphs else "default"
        else:
            mode = "max-autotune" if cudagraphs else "max-autotune-no-cudagraphs"
        for module in self.compiled_networks():
            module.compile(mode=mode)
        self._cudagraphs = cudagraphs

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if getattr(self, "_cudagraphs", False):  # outputs of the previous update's graphs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()

    # ------------------------------------------------------------------------------- logging
    def finish_update(self, metrics: dict[str, Tensor]) -> None:
        """Guard against non-finite losses, count the update, log its metrics on the env-step axis."""
        update = self.updates
        self._finite.record({k: v for k, v in metrics.items() if k.endswith("loss")}, update)
        self.num_updates += 1
        self._updates = update + 1
        trainer_cfg = self.cfg.trainer
        if self._updates % trainer_cfg.finite_check_every == 0 or self._updates % trainer_cfg.checkpoint_every_updates == 0:
            self._finite.check()  # and before every periodic snapshot, so that none holds non-finite weights
        shown = {k: v for k, v in metrics.items() if k in self.progress_bar_metrics}
        self.log_dict(shown, on_step=True, on_epoch=False, prog_bar=True)
        self.log_dict({k: v for k, v in metrics.items() if k not in shown}, on_step=True, on_epoch=False)
        # Host values, logged as host tensors: Lightning would copy a Python float to the device.
        host = {k: torch.tensor(v) for k, v in self._host.items()}
        self.log("env_steps", host["env_steps"], prog_bar=True, on_step=True, on_epoch=False)
        if "beta" in host:
            self.log("train/beta", host["beta"], on_step=True, on_epoch=False)
        if not math.isnan(self._host["episode_return"]):
            self.log("train/episode_return", host["episode_return"], prog_bar=True, on_step=True, on_epoch=False)
        if self._updates % self.trainer.log_every_n_steps == 0:
            # Where the time goes (seconds per call since the last report), as TorchRL's SOTA scripts.
            self.log_dict(timeit.todict(prefix="time"), on_step=True, on_epoch=False)
            timeit.erase()
