"""A report's files as the artifacts of an MLflow "analysis run" in the experiment it describes.

The run carries the tag :data:`ANALYSIS_TAG`, so that ``compare`` never counts it as a training run,
and ends FINISHED; each ``compare`` makes a new one (earlier reports stay in the store).
"""

from __future__ import annotations

import time
from pathlib import Path

from mlflow import MlflowClient

ANALYSIS_TAG = "mlr_lightning.analysis"


def log_report(client: MlflowClient, experiment: str, out_dir: Path, kind: str = "compare") -> str:
    """Log every file of ``out_dir`` as an artifact of a new analysis run; returns its run id."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    name = f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = client.create_run(experiment_id, run_name=name, tags={ANALYSIS_TAG: kind})
    try:
        client.log_artifacts(run.info.run_id, str(out_dir))
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
