"""compare: aggregate metrics against hand-computed cases; run selection, budgets and unequal groups on
real MLflow stores written with MlflowClient; tables against real tiny runs."""

from pathlib import Path

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

ROOT = Path(__file__).resolve().parents[1]


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
    assert ("| old-seed-2 | walker_walk | MLR | 2 | FINISHED | duplicate of seed 2 with the same config: the newer "
            "finished run new-seed-2") in printed
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


# ------------------------------------------------------------- runs of different configs: never pooled
def log_configured_run(client, experiment_id, overrides, returns, end_time, name=None, task="cartpole_swingup"):
    """A run tagged and with its config logged by fit's own tracking code (run_tags, log_config)."""
    from mlr_lightning.domains import load_config
    from mlr_lightning.training.tracking import log_config, run_tags

    cfg = load_config("conf/quickstart.yaml", [f"env.task={task}", *overrides])
    run = client.create_run(experiment_id, run_name=name or f"{task}-{'-'.join(overrides)}", tags=run_tags(cfg))
    log_config(client, run.info.run_id, cfg)
    for step, value in zip([0, 50_000, 100_000], returns):
        client.log_metric(run.info.run_id, "eval/return_mean", value, step=step)
    client.set_terminated(run.info.run_id, "FINISHED", end_time=end_time)
    return run.info.run_id


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_the_cost_table_averages_each_arms_logged_cost_and_counts_runs_without_one(tmp_path, in_repo):
    """Per arm and task: mean wall hours and rates over the runs that logged cost/*, total GPU-hours;
    a run from before fit measured its cost counts in ``runs`` but not in the means."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("cost")
    costs = {1: (2.0, 2.0, 10.0), 2: (4.0, 4.0, 20.0), 3: None}  # seed: wall hours, GPU-hours, updates/s
    for seed, cost in costs.items():
        run_id = log_configured_run(client, exp, [f"seed={seed}"], [0, 1, 2], 1_900_000_000_000 + seed)
        if cost is not None:
            for name, value in zip(("wall_hours", "device_hours", "updates_per_s"), cost):
                client.log_metric(run_id, f"cost/{name}", value, step=100_000)
            client.log_metric(run_id, "cost/env_steps_per_s", 8 * cost[2], step=100_000)
    result = compare(client, "cost", tmp_path / "out", [100_000], reps=100)
    (row,) = result["cost"].to_dict("records")
    assert (row["algorithm"], row["task"], row["runs"], row["with cost"]) == ("MLR", "cartpole_swingup", 3, 2)
    assert row["wall hours (mean)"] == 3.0 and row["GPU-hours (total)"] == 6.0
    assert row["updates/s (mean)"] == 15.0 and row["env steps/s (mean)"] == 120.0
    assert "Cost per arm and task" in (tmp_path / "out" / "summary.md").read_text()


def test_a_rerun_of_one_seed_with_another_mask_ratio_is_not_a_duplicate_and_the_report_says_why(tmp_path, in_repo):
    """MLR seeds 1-3 at mask_ratio 0.5 (scores 600, 700, 800), then seed 1 again at 0.25 (scores 100), the
    newest: it must not supersede seed 1's 0.5 run (which would move the 0.5 mean to 533); a rerun of
    seed 2 with the same config still does."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("drift")
    t = 1_900_000_000_000
    for seed, score in zip([1, 2, 3], [600, 700, 800]):
        log_configured_run(client, exp, ["mlr.mask_ratio=0.5", f"seed={seed}"], [0, score, score], t + seed,
                           name=f"mlr-s{seed}")
    log_configured_run(client, exp, ["mlr.mask_ratio=0.25", "seed=1"], [0, 100, 100], t + 10, name="mlr-s1-rerun")
    log_configured_run(client, exp, ["mlr.mask_ratio=0.5", "seed=2"], [0, 700, 700], t + 11, name="mlr-s2-again")

    result = compare(client, "drift", tmp_path / "out", [100_000], reps=100)
    runs = result["runs"].set_index("run")
    assert runs.loc["mlr-s1", "counted"] and runs.loc["mlr-s1-rerun", "counted"], "two configs: both count, apart"
    assert runs.loc["mlr-s2", "reason"].startswith("duplicate of seed 2 with the same config: the newer finished "
                                                   "run mlr-s2-again")
    per_task = result["per_task"].set_index("algorithm")
    assert per_task.loc["MLR [mlr.mask_ratio=0.5]", "mean"] == pytest.approx(700.0)  # 600, 700 (newer), 800
    assert per_task.loc["MLR [mlr.mask_ratio=0.5]", "seeds"] == "1,2,3"
    assert per_task.loc["MLR [mlr.mask_ratio=0.25]", "mean"] == 100.0 and per_task.loc["MLR [mlr.mask_ratio=0.25]", "runs"] == 1
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert ("MLR: its runs differ in mlr.mask_ratio, so they are separate groups, never pooled or taken for duplicates "
            "of one seed: MLR [mlr.mask_ratio=0.25] (cartpole_swingup s1); MLR [mlr.mask_ratio=0.5] "
            "(cartpole_swingup s1, cartpole_swingup s2, cartpole_swingup s3)") in summary
    assert "| MLR [mlr.mask_ratio=0.25] | cartpole_swingup | 1 | mlr.mask_ratio=0.25 |" in summary, "the arm's config"
    arms = (tmp_path / "out" / "arms.csv").read_text()
    assert "MLR [mlr.mask_ratio=0.25],cartpole_swingup,mlr.mask_ratio,0.25" in arms
    assert "MLR [mlr.mask_ratio=0.25],cartpole_swingup,sac.critic_lr," in arms, "every key of the arm's config"


def test_compare_by_a_config_key_makes_its_values_the_arms(tmp_path, in_repo, capsys):
    """Three runs per arm (mask_ratio 0.25 and 0.75) on two tasks: one per-task row per arm and task,
    aggregates per arm; a Baseline run (another mlr.enabled) is not pooled into an arm."""
    from mlr_lightning.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("ratios")
    t = 1_900_000_000_000
    for task in ("cartpole_swingup", "walker_walk"):
        for ratio, base in (("0.25", 300), ("0.75", 500)):
            for seed in (1, 2, 3):
                t += 1
                log_configured_run(client, exp, [f"mlr.mask_ratio={ratio}", f"seed={seed}"],
                                   [0, base + seed, base + 10 * seed], t, task=task)
    code = main(["compare", "--experiment", "ratios", "--tracking-uri", uri, "--by", "mlr.mask_ratio",
                 "--budgets", "100000", "--reps", "100"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows = [line for line in printed.splitlines() if line.startswith(("| cartpole_swingup | mlr.mask_ratio",
                                                                        "| walker_walk | mlr.mask_ratio"))]
    assert rows == [
        "| cartpole_swingup | mlr.mask_ratio=0.25 | 100000 | 3 | 1,2,3 | 320.000 | 10.000 |  |",
        "| cartpole_swingup | mlr.mask_ratio=0.75 | 100000 | 3 | 1,2,3 | 520.000 | 10.000 |  |",
        "| walker_walk | mlr.mask_ratio=0.25 | 100000 | 3 | 1,2,3 | 320.000 | 10.000 |  |",
        "| walker_walk | mlr.mask_ratio=0.75 | 100000 | 3 | 1,2,3 | 520.000 | 10.000 |  |"]
    aggregate = (tmp_path / "compare-ratios" / "aggregate_100000.csv").read_text()  # beside the store by default
    assert aggregate.count("mlr.mask_ratio=0.25,Mean,0.32") == 1 and aggregate.count("mlr.mask_ratio=0.75,Mean,0.52") == 1
    assert "| mlr.mask_ratio=0.25 | cartpole_swingup | 3 | mlr.mask_ratio=0.25 |" in printed

    log_configured_run(client, exp, ["mlr.mask_ratio=0.25", "mlr.enabled=false", "seed=1"], [0, 5, 5], t + 1,
                       task="walker_walk", name="baseline-s1")
    result = compare(client, "ratios", tmp_path / "again", [100_000], reps=100, by=("mlr.mask_ratio",))
    labels = set(result["per_task"]["algorithm"])
    assert "mlr.mask_ratio=0.25 [mlr.enabled=false]" in labels and "mlr.mask_ratio=0.25 [mlr.enabled=true]" in labels
    assert any(note.startswith("mlr.mask_ratio=0.25: its runs differ in mlr.enabled") for note in result["notes"])


def test_a_malformed_filter_is_one_line_with_the_quoting_rule(store, tmp_path, capsys):
    from mlr_lightning.cli import main

    code = main(["compare", "--experiment", "study", "--tracking-uri", store["uri"], "--out", str(tmp_path / "out"),
                 "--filter", 'params."mlr.mask_ratio" = 0.5'])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: --filter") and "single quotes" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_compare_on_real_runs(tiny_experiment, tmp_path, capsys):
    from mlr_lightning.cli import main

    code = main(["compare", "--experiment", "tiny", "--tracking-uri", tiny_experiment["uri"], "--budgets", "160", "320",
                 "--out", str(tmp_path), "--reps", "200"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Runs: 4 counted" in printed and "0 excluded" in printed
    assert "| cartpole_swingup | MLR | 320 | 2 | 1,2 |" in printed and "Optimality gap" in printed
    # The cost table: one row per arm and task, every run with its logged cost, numbers that are rates.
    cost_table = printed.split("Cost per arm and task", 1)[1].split("\n\n")[1]
    cost_rows = [row.strip("| ").split(" | ") for row in cost_table.splitlines()[2:]]
    assert sorted((cells[0], cells[1]) for cells in cost_rows) == [("Baseline", "cartpole_swingup"),
                                                                   ("MLR", "cartpole_swingup")]
    for cells in cost_rows:
        row = " | ".join(cells)
        runs, with_cost, wall_hours, gpu_hours, updates_per_s, env_steps_per_s = cells[2:]
        assert runs == with_cost == "2", row
        assert float(wall_hours) > 0 and float(gpu_hours) == 0 and float(updates_per_s) > 0, row  # CPU: no GPU-hours
        assert float(env_steps_per_s) > float(updates_per_s), row  # 8 env steps per agent step, 1 update per step
    for name in ("runs.csv", "per_task.csv", "per_task.md", "cost.csv", "aggregate_320.csv", "curves_cartpole_swingup.png",
                 "performance_profile_320.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    result = compare(MlflowClient(tiny_experiment["uri"]), "tiny", tmp_path, reps=100)
    assert result["budgets"] == [320] and set(result["aggregate"][320]["algorithm"]) == {"MLR", "Baseline"}


@pytest.mark.slow
def test_compare_names_the_experiments_it_knows(tiny_experiment):
    with pytest.raises(CompareError, match="no MLflow experiment named 'nope'; experiments in this store: .*tiny"):
        compare(MlflowClient(tiny_experiment["uri"]), "nope", tiny_experiment["output_dir"] / "x", [320])
