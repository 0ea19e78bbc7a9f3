"""The training progress bar, in environment steps toward ``train.num_env_steps`` (the paper's x-axis),
not in Lightning's epochs and batches.

On a terminal it is a tqdm bar with the latest losses and evaluation return; when the output goes to
a file (a cluster job's log), it prints a plain line every 10 % of the run, or every 10 minutes.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from pathlib import Path

from lightning.pytorch.callbacks import ProgressBar
from tqdm import tqdm


class EnvStepProgressBar(ProgressBar):
    LINE_EVERY_FRACTION, LINE_EVERY_S = 0.1, 600.0  # when the output is not a terminal

    def __init__(self, total_env_steps: int, refresh_updates: int = 50):
        super().__init__()
        self.total, self.refresh = total_env_steps, max(1, refresh_updates)
        self._enabled = True
        self._bar: tqdm | None = None
        self._start: float | None = None  # monotonic time and env steps at the start of this session
        self._start_steps = self._next_line_steps = 0
        self._last_line_time = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._start is not None or not (self._enabled and trainer.is_global_zero):
            return
        self._start, self._start_steps = time.monotonic(), int(batch["env_steps"])
        self._last_line_time = self._start
        self._next_line_steps = self._start_steps
        if trainer.ckpt_path:
            print(f"Resumed from {Path(trainer.ckpt_path).parent} at env step {self._start_steps}", flush=True)
        if sys.stdout.isatty():
            self._bar = tqdm(total=self.total, initial=self._start_steps, desc="Training", unit=" env steps",
                             unit_scale=True, dynamic_ncols=True, file=sys.stdout)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._start is not None and (batch_idx + 1) % self.refresh == 0:
            self._show(int(batch["env_steps"]), trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._start is not None:
            self._show(self.total, trainer, pl_module, final=True)
        self.teardown(trainer, pl_module, "fit")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _show(self, steps: int, trainer, pl_module, final: bool = False) -> None:
        metrics = {name.removeprefix("train/"): value for name, value in self.get_metrics(trainer, pl_module).items()
                   if name not in ("v_num", "env_steps")}
        if self._bar is not None:
            self._bar.n = steps
            self._bar.set_postfix(metrics)  # refreshes the bar
            return
        now = time.monotonic()
        if not (final or steps >= self._next_line_steps or now - self._last_line_time >= self.LINE_EVERY_S):
            return
        step = max(1, int(self.total * self.LINE_EVERY_FRACTION))
        self._next_line_steps = (steps // step + 1) * step
        self._last_line_time = now
        elapsed, done = now - self._start, steps - self._start_steps
        left = f", ~{_clock(elapsed / done * (self.total - steps))} left" if done > 0 and not final else ""
        shown = " ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
                         for name, value in metrics.items())
        print(f"Training: {steps}/{self.total} env steps ({steps / self.total:.0%}), {_clock(elapsed)} elapsed{left}"
              + (f"; {shown}" if shown else ""), flush=True)


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))
