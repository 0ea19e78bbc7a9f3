"""MLflow tracking: the embedded store by default, and a real MLflow server on localhost."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlr_lightning.config import load_config
from mlr_lightning.training.experiment import fit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` on 127.0.0.1 in its own process group, stopped with the whole group."""
    port = free_port()
    store = tmp_path / "server.db"
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{store}", "--default-artifact-root",
         (tmp_path / "server-artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("mlflow server did not start within 120 s")
    yield url
    os.killpg(proc.pid, signal.SIGTERM)  # the server's job workers outlive it if only the parent is stopped
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def check_run(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["task"], tags["mlr"], tags["algorithm"], tags["seed"], tags["domain"]) == ("cartpole_swingup", "on", "sac_mlr", "1", "dmc")
    assert len(tags["git_commit"]) == 40 or tags["git_commit"] == "unknown"
    assert run.data.params["cfg/mlr/seq_len"] == "4" and run.data.params["cfg/env/task"] == "cartpole_swingup"
    evals = client.get_metric_history(run.info.run_id, "eval/return_mean")
    assert sorted(m.step for m in evals) == [0, 160, 320], "metrics are logged against environment steps"
    losses = client.get_metric_history(run.info.run_id, "train/mlr_loss")
    assert losses and all(0 < m.step <= 320 for m in losses)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "learning_curve.png", "eval_episode.gif", "metrics.csv", "checkpoints"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/last.ckpt"]
    return run


@pytest.mark.slow
def test_fit_logs_to_the_embedded_store_without_any_server(tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.setattr("mlr_lightning.training.tracking.USER_TRACKING_URI", None)
    run_dir = fit(load_config(None, tiny_overrides))
    store = tmp_path / "runs" / "mlflow.db"
    assert store.exists()
    run = check_run(MlflowClient(f"sqlite:///{store}"), "mlr_lightning")
    assert run.data.tags["checkpoint_path"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert (run_dir / "eval_episode.gif").read_bytes()[:6] == b"GIF89a"


@pytest.mark.slow
def test_fit_logs_to_a_real_mlflow_server(mlflow_server, tiny_overrides, tmp_path):
    run_dir = fit(load_config(None, tiny_overrides + [f"tracking.uri={mlflow_server}", "tracking.experiment=served"]))
    check_run(MlflowClient(mlflow_server), "served")
    assert not (tmp_path / "runs" / "mlflow.db").exists(), "nothing goes to the embedded store when a server is given"
    assert (run_dir / "metrics.csv").exists()


@pytest.mark.slow
def test_large_checkpoints_are_recorded_by_path(tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.setattr("mlr_lightning.training.tracking.USER_TRACKING_URI", None)
    fit(load_config(None, tiny_overrides + ["tracking.max_checkpoint_artifact_mb=0.001"]))
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("mlr_lightning").experiment_id])
    assert client.list_artifacts(run.info.run_id, "checkpoints") == []
    assert Path(run.data.tags["checkpoint_path"]).exists()
