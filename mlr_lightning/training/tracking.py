"""Experiment tracking: CSV and MLflow loggers on the environment-step axis, tags and artifacts.

Lightning's own step counter counts optimizer steps, and under manual optimization with 3-4
optimizers per agent update that is neither agent updates nor environment steps, so every logger
here records against environment steps, the paper's x-axis.

MLflow needs no server: the default store is an embedded sqlite database at
``<output_dir>/mlflow.db`` (MLflow's file store is deprecated), browsable with
``mlflow ui --backend-store-uri sqlite:///<output_dir>/mlflow.db``. ``tracking.uri`` or
``MLFLOW_TRACKING_URI`` point at a real server instead.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import warnings
from collections.abc import Mapping
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

PACKAGE_DIR = Path(__file__).resolve().parent
# The user's MLFLOW_TRACKING_URI, read once at import: mlflow.set_tracking_uri() (which Lightning's
# MLFlowLogger calls) overwrites the environment variable, so reading it later would pick up the
# URI of whatever run came before in this process.
USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


class EnvStepAxis:
    """Mixin for Lightning loggers: use the logged ``env_steps`` value as the step of each record.

    ``skip_through_step``: records up to this step are dropped. A run resumed from a snapshot
    replays the steps between that snapshot and the interruption; they were logged already.
    """

    skip_through_step: int = -1

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if "env_steps" in metrics:
            step = int(metrics["env_steps"])
        if step is not None and step <= self.skip_through_step:
            return
        super().log_metrics(metrics, step)


class EnvStepCSVLogger(EnvStepAxis, CSVLogger):
    """``<run_dir>/metrics.csv`` with ``step`` = environment steps.

    ``keep_through_step``: on resume, the rows up to the snapshot's step are kept (Lightning's
    writer would delete the file) and the rows after it are dropped, as they will be logged again.
    """

    def __init__(self, run_dir: Path, keep_through_step: int | None = None):
        resuming = keep_through_step is not None and rank_zero_only.rank == 0
        kept = _csv_rows(Path(run_dir) / "metrics.csv", keep_through_step) if resuming else []
        super().__init__(run_dir, name="", version="")
        with warnings.catch_warnings():  # it warns that the run directory (config.yaml) is not empty
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            writer = self.experiment
        if kept:
            writer.metrics.extend(kept)  # written back on the first save


class EnvStepMLFlowLogger(EnvStepAxis, MLFlowLogger):
    """MLflow metrics with ``step`` = environment steps."""


def _csv_rows(path: Path, through_step: int) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: v for k, v in row.items() if v != ""} for row in rows if int(row["step"]) <= through_step]


def default_store(output_dir: str | Path) -> Path:
    return Path(output_dir).resolve() / "mlflow.db"


def resolve_tracking_uri(uri: str | None, output_dir: str | Path) -> str:
    """An explicit URI, else $MLFLOW_TRACKING_URI, else the embedded store under ``output_dir``."""
    return uri or USER_TRACKING_URI or f"sqlite:///{default_store(output_dir)}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=10)
    except OSError:
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def run_tags(cfg: DictConfig) -> dict[str, str]:
    """The tags ``compare`` selects and groups runs by."""
    from mlr_lightning.domains import domain_of

    agent = domain_of(cfg).agent_name
    return {
        "domain": cfg.domain,
        "task": cfg.env.task,
        "algorithm": f"{agent}_mlr" if cfg.mlr.enabled else agent,
        "mlr": "on" if cfg.mlr.enabled else "off",
        "seed": str(cfg.seed),
        "git_commit": git_commit(),
    }


RUN_ID_FILE = "mlflow_run.json"


def make_loggers(cfg: DictConfig, run_dir: Path, resume_step: int | None = None) -> list[Logger]:
    """CSV and MLflow loggers. With ``resume_step`` (the snapshot's env step) they continue the
    run's ``metrics.csv`` and its MLflow run (whose id is kept in ``<run_dir>/mlflow_run.json``)."""
    loggers: list[Logger] = [EnvStepCSVLogger(run_dir, keep_through_step=resume_step)]
    if not cfg.tracking.mlflow:
        return loggers
    saved = json.loads((run_dir / RUN_ID_FILE).read_text()) if resume_step is not None and (run_dir / RUN_ID_FILE).is_file() else {}
    uri = saved.get("tracking_uri") or resolve_tracking_uri(cfg.tracking.uri, cfg.output_dir)
    # With the embedded store, keep artifacts beside the database rather than in ./mlruns of the CWD.
    artifacts = (default_store(cfg.output_dir).parent / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
    logger = EnvStepMLFlowLogger(
        experiment_name=cfg.tracking.experiment,
        run_name=run_dir.name,
        tracking_uri=uri,
        tags=run_tags(cfg),
        artifact_location=artifacts,
        run_id=saved.get("run_id"),
    )
    if saved and rank_zero_only.rank == 0:
        logger.experiment.update_run(saved["run_id"], status="RUNNING")
        logger.skip_through_step = last_logged_step(logger.experiment, saved["run_id"])
    loggers.append(logger)
    return loggers


def remember_run(cfg: DictConfig, loggers: list[Logger], run_dir: Path) -> None:
    """Create the MLflow run now and record it in the run directory, for ``fit --resume``."""
    logger = mlflow_logger(loggers)
    if logger is not None:
        uri = resolve_tracking_uri(cfg.tracking.uri, cfg.output_dir)
        (run_dir / RUN_ID_FILE).write_text(json.dumps({"run_id": logger.run_id, "tracking_uri": uri}))


def last_logged_step(client, run_id: str) -> int:
    """The largest step of any metric already in the MLflow run."""
    keys = client.get_run(run_id).data.metrics
    return max((m.step for key in keys for m in client.get_metric_history(run_id, key)), default=-1)


def mlflow_logger(loggers: list[Logger]) -> MLFlowLogger | None:
    return next((lg for lg in loggers if isinstance(lg, MLFlowLogger)), None)
