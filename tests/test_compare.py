"""compare: aggregate metrics against hand-computed cases, tables against real tiny runs."""

import numpy as np
import pytest
from mlflow import MlflowClient

from mlr_lightning.reporting.compare import CompareError, RunCurve, aggregate_table, compare, per_task_table, score_matrices
from mlr_lightning.reporting.reference_scores import human_normalized_score, normalized_score, paper_reference


def curve(task, algorithm, seed, steps, returns, domain="dmc"):
    return RunCurve(f"id{seed}{algorithm}", f"run{seed}", domain, task, algorithm, str(seed), np.array(steps), np.array(returns))


def test_human_normalized_score_formula():
    assert human_normalized_score("pong", -20.7) == 0.0
    assert human_normalized_score("pong", 14.6) == pytest.approx(1.0)
    assert human_normalized_score("breakout", 16.1) == pytest.approx((16.1 - 1.7) / (30.5 - 1.7))
    assert normalized_score("dmc", "walker_walk", 643.0) == pytest.approx(0.643)


def test_paper_reference_column():
    assert paper_reference("dmc", "walker_walk", "MLR", 100_000) == "643±114"
    assert paper_reference("dmc", "cheetah_run", "Baseline", 500_000) == "602±67"
    assert paper_reference("atari", "pong", "MLR", 100_000) == "4.9"
    assert paper_reference("dmc", "walker_walk", "MLR", 123) == ""


def test_score_at_takes_the_last_evaluation_within_the_budget():
    c = curve("t", "MLR", 1, [0, 5000, 10000], [1.0, 2.0, 3.0])
    assert c.score_at(5000) == 2.0 and c.score_at(7000) == 2.0 and c.score_at(10000) == 3.0
    assert np.isnan(c.score_at(15000)), "a run that did not reach the budget has no score there"


def test_aggregates_match_hand_computed_values():
    # 4 runs x 2 tasks of normalised scores. IQM drops the lowest and highest 25% of the 8 scores.
    scores = np.array([[0.1, 0.5], [0.2, 0.6], [0.3, 1.2], [0.4, 0.9]])
    table = aggregate_table({"A": scores}, reps=200).set_index("metric")["value"]
    flat = np.sort(scores.ravel())  # 0.1 0.2 0.3 0.4 0.5 0.6 0.9 1.2
    assert table["IQM"] == pytest.approx(flat[2:6].mean())  # (0.3+0.4+0.5+0.6)/4 = 0.45
    assert table["Mean"] == pytest.approx(scores.mean(axis=0).mean())
    assert table["Median"] == pytest.approx(np.median(scores.mean(axis=0)))  # median of per-task means
    assert table["Optimality gap"] == pytest.approx(np.mean(1 - np.minimum(scores, 1.0)))


def test_confidence_intervals_contain_the_point_estimate_and_shrink_with_agreement():
    rng = np.random.default_rng(0)
    noisy = {"A": rng.uniform(0, 1, size=(10, 3))}
    tight = {"A": 0.5 + rng.uniform(-0.01, 0.01, size=(10, 3))}
    a, b = aggregate_table(noisy, reps=500), aggregate_table(tight, reps=500)
    assert ((a["ci_low"] <= a["value"] + 1e-9) & (a["value"] <= a["ci_high"] + 1e-9)).all()
    assert ((b["ci_high"] - b["ci_low"]) < (a["ci_high"] - a["ci_low"])).all()


def test_per_task_table_and_matrices():
    curves = [curve("walker_walk", alg, s, [0, 100_000], [0, r]) for alg, rs in {"MLR": [600, 700], "Baseline": [400, 500]}.items()
              for s, r in enumerate(rs)]
    table = per_task_table(curves, [100_000]).set_index("algorithm")
    assert table.loc["MLR", "mean"] == 650 and table.loc["MLR", "std"] == 50
    assert table.loc["MLR", "paper"] == "643±114" and table.loc["Baseline", "runs"] == 2
    matrices = score_matrices(curves, 100_000)
    np.testing.assert_allclose(matrices["MLR"], [[0.6], [0.7]])
    with pytest.raises(CompareError, match="reached 200000"):
        score_matrices(curves, 200_000)


@pytest.mark.slow
def test_compare_on_real_runs(tiny_experiment, tmp_path, capsys):
    from mlr_lightning.cli import main

    code = main(["compare", "--experiment", "tiny", "--tracking-uri", tiny_experiment["uri"], "--budgets", "160", "320",
                 "--out", str(tmp_path), "--reps", "200"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| cartpole_swingup | MLR | 320 | 2 |" in printed and "Optimality gap" in printed
    for name in ("per_task.csv", "per_task.md", "aggregate_320.csv", "curves_cartpole_swingup.png", "performance_profile_320.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    result = compare(MlflowClient(tiny_experiment["uri"]), "tiny", tmp_path, [320], reps=100)
    assert set(result["aggregate"][320]["algorithm"]) == {"MLR", "Baseline"}


@pytest.mark.slow
def test_compare_names_the_experiments_it_knows(tiny_experiment):
    with pytest.raises(CompareError, match="no MLflow experiment named 'nope'; experiments in this store: .*tiny"):
        compare(MlflowClient(tiny_experiment["uri"]), "nope", tiny_experiment["output_dir"] / "x", [320])
