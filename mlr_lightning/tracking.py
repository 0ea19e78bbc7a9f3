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

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger
from omegaconf import DictConfig

PACKAGE_DIR = Path(__file__).resolve().parent
# The user's MLFLOW_TRACKING_URI, read once at import: mlflow.set_tracking_uri() (which Lightning's
# MLFlowLogger calls) overwrites the environment variable, so reading it later would pick up the
# URI of whatever run came before in this process.
USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


class EnvStepAxis:
    """Mixin for Lightning loggers: use the logged ``env_steps`` value as the step of each record."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if "env_steps" in metrics:
            step = int(metrics["env_steps"])
        super().log_metrics(metrics, step)


class EnvStepCSVLogger(EnvStepAxis, CSVLogger):
    """``metrics.csv`` with ``step`` = environment steps."""


class EnvStepMLFlowLogger(EnvStepAxis, MLFlowLogger):
    """MLflow metrics with ``step`` = environment steps."""


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
    domain = cfg.get("domain", "dmc")
    agent = "rainbow" if domain == "atari" else "sac"
    return {
        "domain": domain,
        "task": cfg.env.task,
        "algorithm": f"{agent}_mlr" if cfg.mlr.enabled else agent,
        "mlr": "on" if cfg.mlr.enabled else "off",
        "seed": str(cfg.seed),
        "git_commit": git_commit(),
    }


def make_loggers(cfg: DictConfig, run_dir: Path) -> list[Logger]:
    loggers: list[Logger] = [EnvStepCSVLogger(run_dir, name="", version="")]
    if cfg.tracking.mlflow:
        uri = resolve_tracking_uri(cfg.tracking.uri, cfg.output_dir)
        # With the embedded store, keep artifacts beside the database rather than in ./mlruns of the CWD.
        artifacts = (default_store(cfg.output_dir).parent / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
        loggers.append(
            EnvStepMLFlowLogger(
                experiment_name=cfg.tracking.experiment,
                run_name=run_dir.name,
                tracking_uri=uri,
                tags=run_tags(cfg),
                artifact_location=artifacts,
            )
        )
    return loggers


def mlflow_logger(loggers: list[Logger]) -> MLFlowLogger | None:
    return next((lg for lg in loggers if isinstance(lg, MLFlowLogger)), None)
