"""What a run costs: updates/s, env steps/s, the share of wall time in acting, sampling, updating and
evaluating, peak GPU memory and GPU-hours, summed over every attempt of a run (interrupted and resumed).

Logged once, at the end of training, as ``cost/*`` metrics (MLflow and ``metrics.csv``, at the final
env step) and written to ``<run_dir>/cost.json``, where ``fit``'s summary, ``compare`` (from MLflow)
and the sweep's end summary read them.

Timing is by coarse host wall clocks at Lightning's hook boundaries and in the stream
(:class:`~mlr_lightning.data.stopwatch.Stopwatch`), never a CUDA synchronisation: a per-step sync
would itself slow the run it measures. The price: an update's GPU kernels run asynchronously, and
the host waits for them at the next policy call, so on a GPU part of the update is charged to
acting. The shares partition wall time (whatever is left is logging, snapshots and Lightning's own
work), so they sum to at most 1 on any device.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import lightning.pytorch as pl
import torch
from lightning.pytorch.accelerators import CUDAAccelerator

from mlr_lightning.config import replace_text
from mlr_lightning.data.stopwatch import Stopwatch

COST_FILE = "cost.json"
COST_PREFIX = "cost/"  # of the logged metrics
PHASES = ("acting", "sampling", "updating", "evaluating")


@dataclass
class CostCounters:
    """A run's totals over its attempts so far (saved in snapshots, so a resume adds to them)."""

    attempt_wall_s: list[float] = field(default_factory=list)  # one per attempt, from train start
    phase_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    device_hours: float = 0.0  # GPU-hours: wall hours x GPUs used, summed over attempts (0 on CPU)
    num_devices: int = 0  # GPUs of the latest attempt (0: CPU)
    peak_gpu_mem_bytes: int | None = None  # the largest of any attempt on this rank (None: CPU)
    updates: int = 0
    env_steps: int = 0

    @property
    def wall_s(self) -> float:
        return sum(self.attempt_wall_s)

    def metrics(self) -> dict[str, float]:
        """The ``cost/*`` metrics (names without the prefix): rates and shares over all attempts."""
        wall = max(self.wall_s, 1e-9)
        metrics = {"wall_hours": self.wall_s / 3600, "device_hours": self.device_hours,
                   "attempts": float(len(self.attempt_wall_s)), "updates_per_s": self.updates / wall,
                   "env_steps_per_s": self.env_steps / wall}
        metrics |= {f"share_{phase}": seconds / wall for phase, seconds in self.phase_s.items()}
        if self.peak_gpu_mem_bytes is not None:
            metrics["peak_gpu_mem_gib"] = self.peak_gpu_mem_bytes / 2**30
        return metrics


class RunCost(pl.Callback):
    """Counts the run's cost. Place it first among the callbacks (its ``on_train_batch_start`` opens
    the evaluating interval) and :attr:`after_evaluation` right after the evaluation callback (it
    closes that interval and opens the updating one, which this callback's ``on_train_batch_end``
    closes). Acting and sampling come from the stream's stopwatch, as they happen while Lightning
    fetches the batch, between two of its hooks."""

    def __init__(self, run_dir: Path, stopwatch: Stopwatch, env_steps: Callable[[], int]):
        self.run_dir, self.stopwatch, self.env_steps = Path(run_dir), stopwatch, env_steps
        self.counters = CostCounters()  # of earlier attempts, then updated by :meth:`state`
        self.after_evaluation = _AfterEvaluation(self)
        self._start: float | None = None  # this attempt's start (perf_counter)
        self._mark = 0.0  # start of the open interval (evaluating, then updating)
        self._own = Stopwatch()  # this attempt's updating and evaluating seconds
        self._num_devices = 0

    # ------------------------------------------------------------------------------ the hooks
    def on_train_start(self, trainer, pl_module):
        self._start = time.perf_counter()
        cuda = isinstance(trainer.accelerator, CUDAAccelerator)
        self._num_devices = trainer.world_size if cuda else 0  # GPUs of all ranks
        if cuda:
            torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._mark = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._own.add("updating", time.perf_counter() - self._mark)

    def on_train_end(self, trainer, pl_module):
        self._mark = time.perf_counter()  # the final evaluation follows (PeriodicEvaluation.on_train_end)

    def _evaluation_done(self, trainer) -> None:
        now = time.perf_counter()
        self._own.add("evaluating", now - self._mark)
        self._mark = now

    def _finish(self, trainer, pl_module) -> None:
        """After the final evaluation: log the totals and write ``cost.json`` (rank 0)."""
        counters = self.state(trainer, pl_module)
        if not trainer.is_global_zero:
            return
        metrics = {COST_PREFIX + name: value for name, value in counters.metrics().items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics | {"env_steps": float(counters.env_steps)}, step=counters.env_steps)
        write_cost(self.run_dir, counters)

    # ------------------------------------------------------------------------------ the state
    def state(self, trainer, pl_module) -> CostCounters:
        """The totals up to now: earlier attempts plus this one so far."""
        done = self.counters
        if self._start is None:  # this attempt has not started training
            return done
        wall = time.perf_counter() - self._start
        seconds = {**self.stopwatch.seconds, **self._own.seconds}
        peak = done.peak_gpu_mem_bytes
        if self._num_devices:
            attempt_peak = torch.cuda.max_memory_allocated(trainer.strategy.root_device)  # allocator stats: no sync
            peak = max(peak or 0, attempt_peak)
        return CostCounters(
            attempt_wall_s=[*done.attempt_wall_s, wall],
            phase_s={phase: done.phase_s.get(phase, 0.0) + seconds.get(phase, 0.0) for phase in PHASES},
            device_hours=done.device_hours + wall / 3600 * self._num_devices,
            num_devices=self._num_devices,
            peak_gpu_mem_bytes=peak,
            updates=int(pl_module.num_updates),
            # The stream counts from the snapshot once it runs again; a run resumed straight into its
            # final evaluation never does, so the snapshot's own count stands.
            env_steps=max(int(self.env_steps()), done.env_steps),
        )

    def state_dict(self) -> dict:
        trainer = self._trainer
        return asdict(self.state(trainer, trainer.lightning_module)) if trainer is not None else asdict(self.counters)

    def load_state_dict(self, state_dict: dict) -> None:
        self.counters = CostCounters(**state_dict)

    _trainer: pl.Trainer | None = None

    def setup(self, trainer, pl_module, stage):
        self._trainer = trainer  # for state_dict, which Lightning calls without arguments


class _AfterEvaluation(pl.Callback):
    """The end of the evaluating interval (see :class:`RunCost`)."""

    def __init__(self, cost: RunCost):
        self.cost = cost

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.cost._evaluation_done(trainer)

    def on_train_end(self, trainer, pl_module):
        self.cost._evaluation_done(trainer)
        self.cost._finish(trainer, pl_module)


def write_cost(run_dir: Path, counters: CostCounters) -> None:
    """``<run_dir>/cost.json``: the counters and their metrics, written atomically."""
    record = asdict(counters) | {"wall_s": counters.wall_s, "metrics": counters.metrics()}
    try:
        replace_text(Path(run_dir) / COST_FILE, json.dumps(record, indent=1))
    except OSError:  # a full or read-only disk: the metrics are logged; the file is a convenience
        pass


def read_cost(run_dir: Path) -> dict | None:
    """What :func:`write_cost` wrote, None without a (readable) file."""
    try:
        return json.loads((Path(run_dir) / COST_FILE).read_text())
    except (OSError, ValueError):
        return None
