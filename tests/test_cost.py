"""What a run costs (mlr_lightning/training/cost.py), on a real tiny fit stopped by SIGTERM and
resumed: the cost/* metrics are logged once, equal in metrics.csv, MLflow and cost.json, and the
resumed run's totals are the sum of both attempts. No timing thresholds: only relations that hold
on any machine."""

import csv
import math
import signal

import pytest
from mlflow import MlflowClient

from mlr_lightning.training.cost import PHASES, read_cost
from tests.test_resume import LONGER, wait_for_snapshot

pytestmark = pytest.mark.slow  # two real fits


def test_a_resumed_runs_cost_sums_its_attempts_and_is_logged_alike_everywhere(tmp_path, start_cli, run_cli,
                                                                               tiny_base_overrides):
    args = ["fit", "--config", "conf/quickstart.yaml", *tiny_base_overrides, *LONGER, f"output_dir={tmp_path}",
            "run_name=run"]
    run_dir = tmp_path / "run"
    proc = start_cli(*args)
    wait_for_snapshot(run_dir, 10, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert read_cost(run_dir) is None, "cost.json is written when training ends, not on a stop"

    result = run_cli(*args, "--resume", "auto", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    cost = read_cost(run_dir)
    metrics = cost["metrics"]

    # Two attempts, each of positive length, summed: the run's wall time is at least each attempt's.
    first, second = cost["attempt_wall_s"]
    assert first > 0 and second > 0 and cost["wall_s"] == pytest.approx(first + second)
    assert metrics["attempts"] == 2 and metrics["wall_hours"] == pytest.approx(cost["wall_s"] / 3600)
    # The whole run's work over the whole run's time: 40 updates, 480 env steps.
    assert cost["updates"] == 40 and cost["env_steps"] == 480
    assert metrics["updates_per_s"] == pytest.approx(40 / cost["wall_s"])
    assert metrics["env_steps_per_s"] == pytest.approx(480 / cost["wall_s"])
    # On CPU: no GPU-hours, no GPU memory.
    assert cost["num_devices"] == 0 and metrics["device_hours"] == 0 and "peak_gpu_mem_gib" not in metrics
    # Every phase took time; together they cover most of the wall time and never more than all of it.
    shares = [metrics[f"share_{phase}"] for phase in PHASES]
    assert all(share > 0 for share in shares), shares
    assert 0.5 <= sum(shares) <= 1, shares

    # metrics.csv and MLflow hold the same numbers, once, at the final env step.
    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("cost/wall_hours")]
    assert len(rows) == 1 and int(float(rows[0]["step"])) == 480, "logged once, at the end of the resumed run"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("mlr_lightning").experiment_id])
    logged = {k.removeprefix("cost/"): v for k, v in run.data.metrics.items() if k.startswith("cost/")}
    assert set(logged) == set(metrics)
    for name, value in metrics.items():
        assert math.isclose(float(rows[0][f"cost/{name}"]), value, rel_tol=1e-6), name
        assert math.isclose(logged[name], value, rel_tol=1e-6), name

    # fit's summary says it, for the run as a whole.
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("Cost: ")]
    assert "over 2 attempts" in line and "GPU-hours n/a (CPU)" in line and "updates/s" in line
