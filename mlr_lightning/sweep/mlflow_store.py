"""The sweep's side of MLflow: the store made once, one run per trial, failures recorded.

``fit`` logs each trial's run itself (same params, tags and metrics as any run); the sweep only
prepares the store before the trials start and tidies up what a process that died cannot.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from mlr_lightning.run_identity import REPLACED_TAG
from mlr_lightning.sweep.spec import SweepError, SweepPlan, Trial
from mlr_lightning.training.run_dir import in_use
from mlr_lightning.training.tracking import read_run_record, sync_run



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

    from mlr_lightning.training.tracking import artifact_location, ensure_store

    ensure_store(plan.tracking_uri)  # an embedded store is created and migrated atomically, under a lock
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="20")  # unreachable: say so now
    try:
        client = MlflowClient(plan.tracking_uri)
        if client.get_experiment_by_name(plan.experiment) is None:  # with the artifacts where fit's would be
            client.create_experiment(plan.experiment, artifact_location=artifact_location(plan.tracking_uri))
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


def close_orphans(client, experiment: str, trials: list[Trial]) -> list[str]:
    """The trials' MLflow runs left RUNNING by a process that is gone (a SIGKILL, a lost node: no
    process holds the run directory) get the status the run directory recorded, else KILLED, and their
    metrics are filled in from ``metrics.csv`` (:func:`~mlr_lightning.training.tracking.sync_run`);
    a trial's older runs, which its directory no longer records, become KILLED. Returns
    ``"name (STATUS)"`` per run closed."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    by_name = {t.name: t for t in trials}
    closed = []
    for run in client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'",
                                  max_results=10000):
        trial = by_name.get(run.info.run_name)
        if trial is None or in_use(trial.run_dir):
            continue
        status = None
        if read_run_record(trial.run_dir).get("run_id") == run.info.run_id:
            try:
                status = sync_run(trial.run_dir, client.tracking_uri)[2]
            except Exception:  # noqa: BLE001  (a damaged metrics.csv, say: the trial's resume names it)
                pass
        if status is None:
            client.set_tag(run.info.run_id, "status_reason", "left RUNNING by a process that is gone; found by the "
                                                             "sweep at its start")
            client.set_terminated(run.info.run_id, "KILLED")
            status = "KILLED"
        closed.append(f"{trial.name} ({status})")
    return closed
