"""MLflow tracking: the embedded store by default, and a real MLflow server on localhost."""

from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlr_lightning.domains import load_config
from mlr_lightning.training.experiment import fit


def check_run(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["task"], tags["mlr"], tags["algorithm"], tags["seed"], tags["domain"]) == ("cartpole_swingup", "on", "sac_mlr", "1", "dmc")
    assert len(tags["git_commit"]) == 40 or tags["git_commit"] == "unknown"
    params = run.data.params
    assert params["mlr.seq_len"] == "4" and params["env.task"] == "cartpole_swingup" and params["mlr.enabled"] == "true"
    assert "trainer.log_every_updates" not in params, "keys a resume may change are tags, not params"
    assert tags["cfg.trainer.log_every_updates"] == "5"
    # a filter reads like the config
    assert client.search_runs([exp.experiment_id], filter_string="params.\"mlr.enabled\" = 'true'")
    assert not client.search_runs([exp.experiment_id], filter_string="params.\"mlr.enabled\" = 'false'")
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


def test_a_full_disk_never_cuts_a_metrics_row_and_the_rows_wait_for_room(tmp_path, files_refused):
    import csv

    from mlr_lightning.training.tracking import EnvStepCSVLogger

    logger = EnvStepCSVLogger(tmp_path)
    step = 0

    def log_rows(n: int) -> None:
        nonlocal step
        for _ in range(n):
            step += 8
            logger.log_metrics({"env_steps": float(step), "train/critic_loss": 0.123456789 * step}, step)
        logger.save()

    log_rows(38)  # ~950 bytes: below the 1 kB the disk takes
    before = (tmp_path / "metrics.csv").read_bytes()
    assert 900 < len(before) < 1024
    with files_refused(), pytest.warns(UserWarning, match="rows are kept in memory"):
        log_rows(10)  # the append crosses 1 kB: refused midway
    assert (tmp_path / "metrics.csv").read_bytes() == before, "a refused write left part of a row"
    log_rows(1)  # room again: every row arrives, each whole
    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(float(r["step"])) for r in rows] == list(range(8, 8 * 50, 8))
    assert all(r["train/critic_loss"] for r in rows)
