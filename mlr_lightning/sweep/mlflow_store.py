"""The sweep's side of MLflow: the store made once, one run per trial, failures recorded.

``fit`` logs each trial's run itself (same params, tags and metrics as any run); the sweep only
prepares the store before the trials start and tidies up what a process that died cannot.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from mlr_lightning.run_identity import REPLACED_TAG
from mlr_lightning.sweep.spec import SweepError, SweepPlan



def is_local_uri(uri: str) -> bool:
    """A file on this machine (the embedded sqlite store, a file store), not a server."""
    return urlparse(uri).scheme in ("", "file", "sqlite")


def open_store(plan: SweepPlan):
    """Creates the store and the experiment once, before any trial starts: trials that create the
    embedded sqlite store (schema migration) or the experiment at the same time collide.
    Returns an ``MlflowClient``, or None when the trials do not log to MLflow."""
    if plan.tracking_uri is None:
        return None
    from mlflow import MlflowClient

    from mlr_lightning.training.tracking import default_store, ensure_store

    ensure_store(plan.tracking_uri)  # an embedded store is created and migrated atomically, under a lock
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="20")  # unreachable: say so now
    try:
        client = MlflowClient(plan.tracking_uri)
        if client.get_experiment_by_name(plan.experiment) is None:
            # Where fit's logger would put the artifacts: beside the embedded store, or the server's choice.
            embedded = plan.tracking_uri.startswith("sqlite:")
            artifacts = (default_store(plan.output_dir).parent / "mlartifacts").as_uri() if embedded else None
            client.create_experiment(plan.experiment, artifact_location=artifacts)
    except Exception as err:  # noqa: BLE001  (whatever the cause, the store cannot be used)
        first_line = (str(err).splitlines() or [""])[0]
        raise SweepError(f"tracking.uri {plan.tracking_uri}: cannot open the MLflow store ({type(err).__name__}: "
                         f"{first_line})") from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return client


def mark_failed(client, experiment: str, run_name: str, error: str) -> None:
    """The trial's newest MLflow run becomes FAILED with the error (a killed ``fit`` leaves it RUNNING)."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{run_name}'",
                              order_by=["attributes.start_time DESC"], max_results=1) if exp else []
    if runs:
        client.set_tag(runs[0].info.run_id, "error", error[-4900:])
        client.set_terminated(runs[0].info.run_id, "FAILED")


def tag_replaced(client, experiment: str, run_name: str, new_hash: str) -> None:
    """The trial's runs stay in MLflow, tagged as replaced by a fresh start with another config
    (``sweep --restart-changed``): the sweep no longer counts them as the trial, ``compare`` lists them
    as excluded with the reason."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{run_name}'",
                              max_results=1000) if exp else []
    for run in runs:
        if REPLACED_TAG not in run.data.tags:
            client.set_tag(run.info.run_id, REPLACED_TAG, f"by a fresh start with config hash {new_hash}")
