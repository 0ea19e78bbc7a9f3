"""Statistics between arms: the probability of improvement against a direct Mann-Whitney computation,
IQM curves, the written matrices and figures; and compare's report on real tiny runs, logged to MLflow."""

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from mlr_lightning.reporting.analysis_run import ANALYSIS_TAG
from mlr_lightning.reporting.compare import aggregate_table, compare
from mlr_lightning.reporting.statistics import (
    arm_pairs,
    iqm_curves,
    probability_of_improvement,
    write_statistics,
)


def mann_whitney_probability(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) + P(X = Y) / 2 per task over every pair of runs, averaged over tasks: U / (n_x n_y)."""
    per_task = [np.mean([(a > b) + 0.5 * (a == b) for a in x[:, t] for b in y[:, t]]) for t in range(x.shape[1])]
    return float(np.mean(per_task))


def test_probability_of_improvement_is_the_mann_whitney_statistic_averaged_over_tasks():
    rng = np.random.default_rng(0)
    mlr = rng.normal(0.6, 0.2, size=(5, 4))
    baseline = rng.normal(0.5, 0.2, size=(3, 4))  # arms may have different numbers of runs
    baseline[0, 1] = mlr[2, 1]  # a tie counts one half
    table = probability_of_improvement({"MLR": mlr, "Baseline": baseline}, reps=300)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["X"], row["Y"]) == ("MLR", "Baseline")
    assert abs(row["P(X > Y)"] - mann_whitney_probability(mlr, baseline)) < 1e-9
    assert row["ci_low"] <= row["P(X > Y)"] <= row["ci_high"]
    assert (row["runs X"], row["runs Y"], row["tasks"]) == (5, 3, 4)


def test_identical_arms_give_one_half_and_a_dominating_arm_one():
    scores = np.random.default_rng(1).uniform(size=(4, 3))
    same = probability_of_improvement({"A": scores, "B": scores.copy()}, reps=200).iloc[0]
    assert same["P(X > Y)"] == 0.5
    better = probability_of_improvement({"MLR": scores + 2.0, "Baseline": scores}, reps=200).iloc[0]
    assert better["P(X > Y)"] == 1.0 and better["ci_low"] == 1.0


def test_every_pair_of_arms_once_with_the_baseline_as_y():
    assert arm_pairs(["Baseline", "MLR"]) == [("MLR", "Baseline")]
    assert arm_pairs(["seq_len=8", "Baseline", "seq_len=16"]) == [("seq_len=16", "seq_len=8"), ("seq_len=16", "Baseline"),
                                                                 ("seq_len=8", "Baseline")]


def test_iqm_curves_follow_the_iqm_at_each_step():
    rng = np.random.default_rng(2)
    by_step = {s: {"MLR": rng.uniform(size=(4, 2)) + s / 10, "Baseline": rng.uniform(size=(4, 2))} for s in (0, 5, 10)}
    curves = iqm_curves(by_step, reps=200)
    for step, matrices in by_step.items():
        for arm, m in matrices.items():
            row = curves[(curves["step"] == step) & (curves["arm"] == arm)].iloc[0]
            flat = np.sort(m.ravel())
            assert row["IQM"] == pytest.approx(flat[2:6].mean())  # 8 scores: the middle 4
            assert row["ci_low"] <= row["IQM"] <= row["ci_high"]


def test_write_statistics_writes_matrices_figures_and_tables(tmp_path):
    rng = np.random.default_rng(3)
    matrices = {"MLR": rng.uniform(size=(3, 2)), "Baseline": rng.uniform(size=(2, 2))}
    result = write_statistics({100: matrices}, {100: ["a", "b"]}, {100: aggregate_table(matrices, reps=100)},
                              {50: matrices, 100: matrices}, tmp_path, reps=100)
    saved = np.load(tmp_path / "scores_100.npz")
    np.testing.assert_array_equal(saved["MLR"], matrices["MLR"])
    assert list(saved["tasks"]) == ["a", "b"] and saved["Baseline"].shape == (2, 2)
    rows = pd.read_csv(tmp_path / "scores_100.csv")
    assert len(rows) == 3 * 2 + 2 * 2
    assert rows.query("arm == 'MLR' and run == 2 and task == 'b'")["normalised score"].item() == pytest.approx(matrices["MLR"][2, 1])
    for name in ("aggregate_intervals_100.png", "iqm_curves.png", "iqm_curves.csv", "probability_of_improvement.csv"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "P(X > Y)" in result["text"]


def test_compare_reports_the_statistics_and_logs_them_to_an_analysis_run(tiny_experiment, tmp_path):
    client = MlflowClient(tiny_experiment["uri"])
    out = tmp_path / "report"
    result = compare(client, tiny_experiment["experiment"], out, reps=100)
    improvement = result["statistics"]["improvement"]
    assert list(improvement[["X", "Y"]].itertuples(index=False, name=None)) == [("MLR", "Baseline")] * len(result["budgets"])
    assert "Probability of improvement" in (out / "summary.md").read_text()
    assert (out / f"scores_{result['budgets'][-1]}.npz").is_file() and (out / "iqm_curves.png").is_file()
    run = client.get_run(result["analysis_run"])
    assert run.info.status == "FINISHED" and run.data.tags[ANALYSIS_TAG] == "compare"
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.md", "probability_of_improvement.csv", "iqm_curves.png"} <= logged
    again = compare(client, tiny_experiment["experiment"], tmp_path / "again", reps=100)
    assert result["analysis_run"] not in set(again["runs"]["run_id"]), "a report is never counted as a run"
