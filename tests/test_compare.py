"""compare: aggregate metrics against hand-computed cases; run selection, budgets and unequal groups on
real MLflow stores written with MlflowClient; tables against real tiny runs."""

import numpy as np
import pytest
from mlflow import MlflowClient

from mlr_lightning.reporting.compare import (
    STD,
    CompareError,
    RunCurve,
    aggregate_table,
    compare,
    per_task_table,
    score_matrices,
)
from mlr_lightning.domains import DOMAINS
from mlr_lightning.domains.atari import human_normalized_score


def curve(task, algorithm, seed, steps, returns, domain="dmc"):
    return RunCurve(f"id{seed}{algorithm}", f"run{seed}", domain, task, algorithm, str(seed), np.array(steps), np.array(returns))


def test_human_normalized_score_formula():
    assert human_normalized_score("pong", -20.7) == 0.0
    assert human_normalized_score("pong", 14.6) == pytest.approx(1.0)
    assert human_normalized_score("breakout", 16.1) == pytest.approx((16.1 - 1.7) / (30.5 - 1.7))
    assert DOMAINS["dmc"].normalized_score("walker_walk", 643.0) == pytest.approx(0.643)


def test_paper_reference_column():
    assert DOMAINS["dmc"].paper_reference("walker_walk", "MLR", 100_000) == "643±114"
    assert DOMAINS["dmc"].paper_reference("cheetah_run", "Baseline", 500_000) == "602±67"
    assert DOMAINS["atari"].paper_reference("pong", "MLR", 100_000) == "4.9"
    assert DOMAINS["dmc"].paper_reference("walker_walk", "MLR", 123) == ""


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


def test_confidence_intervals_are_reproducible():
    """rliable draws from NumPy's global generator whatever random_state it is given: the seed must hold."""
    scores = {"A": np.random.default_rng(0).uniform(size=(5, 3))}
    first = aggregate_table(scores, reps=300, seed=0)
    np.random.seed(123)  # whatever the caller did to the global generator
    again = aggregate_table(scores, reps=300, seed=0)
    np.testing.assert_array_equal(first[["ci_low", "ci_high"]].to_numpy(), again[["ci_low", "ci_high"]].to_numpy())
    assert not np.array_equal(first["ci_low"], aggregate_table(scores, reps=300, seed=1)["ci_low"])


def test_per_task_table_uses_the_sample_std_and_matrices_keep_every_run():
    curves = [curve("walker_walk", alg, s, [0, 100_000], [0, r]) for alg, rs in {"MLR": [600, 700, 800], "Baseline": [400, 500]}.items()
              for s, r in enumerate(rs)]
    table = per_task_table(curves, [100_000]).set_index("algorithm")
    assert table.loc["MLR", "mean"] == 700 and table.loc["MLR", STD] == pytest.approx(100.0)  # ddof=1; ddof=0 gives 81.6
    assert table.loc["Baseline", STD] == pytest.approx(np.std([400, 500], ddof=1))
    assert table.loc["MLR", "paper"] == "643±114" and table.loc["Baseline", "runs"] == 2
    matrices, notes = score_matrices(curves, 100_000)
    np.testing.assert_allclose(matrices["MLR"], [[0.6], [0.7], [0.8]])  # 3 runs, not truncated to Baseline's 2
    np.testing.assert_allclose(matrices["Baseline"], [[0.4], [0.5]])
    assert "different numbers of runs" in notes[0]
    with pytest.raises(CompareError, match="reach 200000"):
        score_matrices(curves, 200_000)
    assert per_task_table(curves, [200_000]).empty, "no 'runs 0 | nan' rows for a budget nobody reached"


def test_unequal_runs_per_task_within_an_algorithm_are_refused_or_restricted_to_common_seeds():
    curves = [curve(task, "MLR", s, [0, 100], [0, 500 + s]) for task, seeds in {"a_b": [1, 2, 3], "c_d": [1, 3]}.items()
              for s in seeds]
    with pytest.raises(CompareError, match=r"MLR has unequal numbers of runs per task \(a_b: 3 \(seeds 1,2,3\); c_d: 2 "
                                           r"\(seeds 1,3\)\).*--common-seeds.*\(1,3\)"):
        score_matrices(curves, 100)
    matrices, notes = score_matrices(curves, 100, common_seeds=True)
    np.testing.assert_allclose(matrices["MLR"], [[0.501, 0.501], [0.503, 0.503]])
    assert "seeds 1,3" in notes[0] and "run2 (a_b, MLR, seed 2)" in notes[0]


# ---------------------------------------------------------------------------------- real MLflow store
def log_run(client, experiment_id, task, mlr, seed, returns, status="FINISHED", end_time=None, name=None):
    """One run as fit tags it, with eval/return_mean at environment steps 0, 50k, 100k (as many as given)."""
    run = client.create_run(experiment_id, run_name=name or f"{task}-{mlr}-s{seed}",
                            tags={"domain": "dmc", "task": task, "mlr": mlr, "seed": str(seed), "algorithm": "sac"})
    for step, value in zip([0, 50_000, 100_000], returns):
        client.log_metric(run.info.run_id, "eval/return_mean", value, step=step)
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status, end_time=end_time)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """walker_walk: MLR seeds 1-3 (seed 2 twice: an older run that scored 990), a FAILED MLR seed 4
    (scored 5), Baseline seeds 1-2 and a still-RUNNING Baseline seed 3; reacher_easy: MLR seed 1
    stops at 50k steps."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("study")
    t = 1_900_000_000_000
    log_run(client, exp, "walker_walk", "on", 1, [0, 300, 600], end_time=t)
    log_run(client, exp, "walker_walk", "on", 2, [0, 900, 990], end_time=t + 1, name="old-seed-2")
    log_run(client, exp, "walker_walk", "on", 2, [0, 350, 700], end_time=t + 2, name="new-seed-2")
    log_run(client, exp, "walker_walk", "on", 3, [0, 400, 800], end_time=t + 3)
    log_run(client, exp, "walker_walk", "on", 4, [0, 5, 5], status="FAILED", end_time=t + 4)
    log_run(client, exp, "walker_walk", "off", 1, [0, 200, 400], end_time=t + 5)
    log_run(client, exp, "walker_walk", "off", 2, [0, 250, 500], end_time=t + 6)
    log_run(client, exp, "walker_walk", "off", 3, [0, 100], status="RUNNING")
    log_run(client, exp, "reacher_easy", "on", 1, [0, 700], end_time=t + 7)
    return {"client": client, "uri": uri}


def test_compare_counts_one_finished_run_per_seed_and_reports_what_it_excludes(store, tmp_path, capsys):
    from mlr_lightning.cli import main

    code = main(["compare", "--experiment", "study", "--tracking-uri", store["uri"], "--budgets", "100000",
                 "--out", str(tmp_path / "out"), "--reps", "200"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Runs: 6 counted" in printed and "3 excluded" in printed
    assert "| walker_walk-on-s4 | walker_walk | MLR | 4 | FAILED | status FAILED" in printed
    assert "| walker_walk-off-s3 | walker_walk | Baseline | 3 | RUNNING | status RUNNING" in printed
    assert "| old-seed-2 | walker_walk | MLR | 2 | FINISHED | duplicate of seed 2: the newer finished run new-seed-2" in printed
    assert "| walker_walk | MLR | 100000 | 3 | 1,2,3 | 700.000 | 100.000 | 643±114 |" in printed, "600, 700, 800"
    assert "| walker_walk | Baseline | 100000 | 2 | 1,2 | 450.000 |" in printed
    assert "reacher_easy-on-s1 (reacher_easy, MLR, seed 1) ends at 50000" in printed

    result = compare(store["client"], "study", tmp_path / "again", [100_000], reps=200)
    aggregate = result["aggregate"][100_000].set_index(["algorithm", "metric"])
    assert aggregate.loc[("MLR", "Mean"), "value"] == pytest.approx(0.7)  # (0.6 + 0.7 + 0.8) / 3: no FAILED, no old duplicate
    assert aggregate.loc[("MLR", "Mean"), "runs"] == 3 and aggregate.loc[("Baseline", "Mean"), "runs"] == 2
    assert aggregate.loc[("Baseline", "Mean"), "value"] == pytest.approx(0.45)
    runs = result["runs"].set_index("run")
    assert not runs.loc["walker_walk-on-s4", "counted"] and runs.loc["new-seed-2", "counted"]
    assert set(result["excluded"]["run"]) == {"walker_walk-on-s4", "walker_walk-off-s3", "old-seed-2"}
    assert (tmp_path / "again" / "runs.csv").read_text().count("\n") == 10  # header + all 9 runs


def test_compare_says_which_budgets_the_runs_reach(store, tmp_path, capsys):
    from mlr_lightning.cli import main

    code = main(["compare", "--experiment", "study", "--tracking-uri", store["uri"], "--budgets", "500000",
                 "--out", str(tmp_path / "out")])
    assert code == 2
    error = capsys.readouterr().err
    assert "no run reaches 500000 env steps" in error
    assert "final evaluations are at 50000 env steps (1 run), 100000 env steps (5 runs)" in error

    result = compare(store["client"], "study", tmp_path / "data", reps=100)  # no budgets: from the data
    assert result["budgets"] == [50_000, 100_000]
    assert set(result["aggregate"]) == {50_000, 100_000}
    assert any(n.startswith("reacher_easy is left out of the aggregate at 50000 env steps: only MLR") for n in result["notes"])
    assert set(result["per_task"]["env_steps"]) == {50_000, 100_000}
    result = compare(store["client"], "study", tmp_path / "mixed", [100_000, 500_000], reps=100)
    assert any(n.startswith("no run reaches 500000 env steps") for n in result["notes"])
    assert set(result["aggregate"]) == {100_000}
    assert 500_000 not in set(result["per_task"]["env_steps"])


@pytest.mark.slow
def test_compare_on_real_runs(tiny_experiment, tmp_path, capsys):
    from mlr_lightning.cli import main

    code = main(["compare", "--experiment", "tiny", "--tracking-uri", tiny_experiment["uri"], "--budgets", "160", "320",
                 "--out", str(tmp_path), "--reps", "200"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Runs: 4 counted" in printed and "0 excluded" in printed
    assert "| cartpole_swingup | MLR | 320 | 2 | 1,2 |" in printed and "Optimality gap" in printed
    for name in ("runs.csv", "per_task.csv", "per_task.md", "aggregate_320.csv", "curves_cartpole_swingup.png",
                 "performance_profile_320.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    result = compare(MlflowClient(tiny_experiment["uri"]), "tiny", tmp_path, reps=100)
    assert result["budgets"] == [320] and set(result["aggregate"][320]["algorithm"]) == {"MLR", "Baseline"}


@pytest.mark.slow
def test_compare_names_the_experiments_it_knows(tiny_experiment):
    with pytest.raises(CompareError, match="no MLflow experiment named 'nope'; experiments in this store: .*tiny"):
        compare(MlflowClient(tiny_experiment["uri"]), "nope", tiny_experiment["output_dir"] / "x", [320])
