"""What ``fit`` prints: no library chatter by default (``fit --verbose`` keeps it), a summary at the end.

Every silenced message is named here, by logger or by message and category, so that a warning we did
not anticipate still reaches the user.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import shlex
import sys
import warnings
from datetime import timedelta
from pathlib import Path

from mlr_lightning.training.cost import PHASES, read_cost
from mlr_lightning.training.snapshot import LAST_ARTIFACT

# Logged at INFO by libraries: Lightning's "GPU available", litlogger tip, model summary, `weights_only`
# per save and "`Trainer.fit` stopped"; TorchRL's ANSI-coloured storage messages (on stdout); MLflow's
# database migrations.
CHATTY_LOGGERS = ("lightning.pytorch", "lightning.fabric", "torchrl", "mlflow")
# (message regex, category) of warnings that tell a user of this package nothing they can act on.
NOISY_WARNINGS = (
    # Lightning's pytree helper on a newer torch.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # The stream is an IterableDataset with a length, consumed in this process (num_workers=0).
    (r"Your `IterableDataset` has `__len__` defined", UserWarning),
    # On resume: the stream is restored from our own snapshot (training/snapshot.py), not by Lightning.
    (r"You're resuming from a checkpoint that ended before the epoch ended", UserWarning),
    # A short run has fewer updates than trainer.log_every_updates; the env-step loggers still log evaluations.
    (r"The number of training batches \(\d+\) is smaller than the logging interval", UserWarning),
    # arch's bootstrap, which rliable calls with the deprecated random_state (compare).
    (r"(random_state|The random_state property|get_state) is deprecated", FutureWarning),
)


def quiet_libraries(verbose: bool = False) -> None:
    """Silence the libraries' chatter on stdout/stderr; ``verbose`` keeps it (without ANSI colours
    when the output is not a terminal)."""
    if verbose:
        if not sys.stdout.isatty():
            for handler in logging.getLogger("torchrl").handlers:
                handler.setFormatter(logging.Formatter("%(asctime)s [%(name)s][%(levelname)s] %(message)s"))
        return
    import lightning.pytorch  # noqa: F401  (it sets its logger's level when first imported)

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # so does mlflow, from this variable
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.loggers.mlflow").addFilter(_not_new_experiment)  # once: a set of filters
    for message, category in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchrl")  # TorchRL shows its own
    try:  # the Arcade Learning Environment's banner, printed by its C++ core on the first game
        import ale_py

        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Warning)
    except ImportError:
        pass


def _not_new_experiment(record: logging.LogRecord) -> bool:
    """Lightning warns when it creates the MLflow experiment of a first run: expected, not a problem."""
    return not record.getMessage().startswith("Experiment with name")


def fit_summary(run_dir: Path, wall_s: float, resumed: bool = False) -> str:
    """The lines ``fit`` ends with: final evaluation, wall time, the MLflow command; then ``Results:``."""
    lines = []
    final = _final_evaluation(run_dir / "metrics.csv")
    if final:
        hns = f", human-normalised {float(final['eval/hns']):.3f}" if final.get("eval/hns") else ""
        lines.append(f"Final evaluation at env step {int(float(final['step']))}: return "
                     f"{float(final['eval/return_mean']):.1f} ± {float(final['eval/return_std']):.1f}{hns}")
    lines.append(f"Wall time: {timedelta(seconds=round(wall_s))}" + (" (this session)" if resumed else ""))
    cost = read_cost(run_dir)
    if cost is not None:
        lines.append(cost_line(cost))
    uri = _tracking_uri(run_dir)
    if uri and uri.startswith(("http://", "https://")):
        lines.append(f"MLflow: {uri}")
    elif uri:
        lines.append(f"MLflow: mlflow ui --backend-store-uri {shlex.quote(uri)}")
    lines.append(f"Results: {run_dir} (config.yaml, metrics.csv, {LAST_ARTIFACT})")
    return "\n".join(lines)


def cost_line(cost: dict) -> str:
    """One line of ``cost.json`` (:mod:`mlr_lightning.training.cost`): what the run cost, over all its attempts."""
    metrics, attempts = cost["metrics"], len(cost["attempt_wall_s"])
    gpu = (f"{metrics['device_hours']:.3f} GPU-hours on {cost['num_devices']} GPU(s), peak GPU memory "
           f"{metrics['peak_gpu_mem_gib']:.2f} GiB" if cost["num_devices"] else "GPU-hours n/a (CPU)")
    shares = ", ".join(f"{phase} {metrics[f'share_{phase}']:.0%}" for phase in PHASES)
    return (f"Cost: {timedelta(seconds=round(cost['wall_s']))} of training"
            + (f" over {attempts} attempts" if attempts > 1 else "")
            + f" ({metrics['wall_hours']:.3f} h), {gpu}; {metrics['updates_per_s']:.2f} updates/s, "
            f"{metrics['env_steps_per_s']:.1f} env steps/s; time in {shares}")


def _final_evaluation(metrics: Path) -> dict | None:
    try:
        with open(metrics, newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if row.get("eval/return_mean")]
    except (OSError, csv.Error, UnicodeDecodeError):
        return None
    rows = [row for row in rows if _is_number(row.get("step")) and _is_number(row.get("eval/return_std"))]
    return max(rows, key=lambda row: float(row["step"]), default=None)


def _tracking_uri(run_dir: Path) -> str | None:
    from mlr_lightning.training.tracking import read_run_record

    return read_run_record(run_dir).get("tracking_uri")


def _is_number(text: str | None) -> bool:
    try:
        return math.isfinite(float(text))
    except (TypeError, ValueError):
        return False
