"""Turn an MLflow experiment into the paper's tables and plots.

Runs are read through MLflow's client, grouped by their ``task`` and ``mlr`` tags (MLR vs Baseline)
and scored by ``eval/return_mean`` at the requested environment-step budgets. Per task: mean ± std
over seeds beside the paper's number. Aggregates over tasks, on normalised scores (DMC return /
1000, Atari human-normalised score): IQM, median, mean and optimality gap with stratified bootstrap
95 % confidence intervals from ``rliable``; plus learning curves with bootstrap bands and
performance profiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from mlr_lightning.reporting.reference_scores import normalized_score, paper_reference
from mlr_lightning.reporting.plots import learning_curves, performance_profiles

EVAL_METRIC = "eval/return_mean"
AGGREGATES = ("IQM", "Median", "Mean", "Optimality gap")


class CompareError(ValueError):
    pass


@dataclass
class RunCurve:
    run_id: str
    name: str
    domain: str
    task: str
    algorithm: str  # "MLR" or "Baseline"
    seed: str
    steps: np.ndarray  # environment steps of the evaluations
    returns: np.ndarray

    def score_at(self, budget: int) -> float:
        """Last evaluation at or before ``budget``; NaN if the run did not reach it."""
        if len(self.steps) == 0 or self.steps.max() < budget:
            return float("nan")
        return float(self.returns[self.steps <= budget][-1])


def fetch_runs(client: MlflowClient, experiment: str, filter_string: str = "") -> list[RunCurve]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        known = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise CompareError(f"no MLflow experiment named {experiment!r}; experiments in this store: {known}")
    runs = client.search_runs([exp.experiment_id], filter_string=filter_string, max_results=10_000)
    curves = []
    for run in runs:
        tags = run.data.tags
        history = sorted(client.get_metric_history(run.info.run_id, EVAL_METRIC), key=lambda m: m.step)
        curves.append(RunCurve(
            run_id=run.info.run_id,
            name=run.info.run_name,
            domain=tags.get("domain", "dmc"),
            task=tags.get("task", "?"),
            algorithm="MLR" if tags.get("mlr") == "on" else "Baseline",
            seed=tags.get("seed", "?"),
            steps=np.array([m.step for m in history]),
            returns=np.array([m.value for m in history]),
        ))
    if not curves:
        raise CompareError(f"experiment {experiment!r} has no runs matching filter {filter_string!r}")
    return curves


def per_task_table(curves: list[RunCurve], budgets: list[int]) -> pd.DataFrame:
    rows = []
    for (task, algorithm), group in _groups(curves).items():
        for budget in budgets:
            scores = np.array([c.score_at(budget) for c in group])
            scores = scores[~np.isnan(scores)]
            rows.append({
                "task": task, "algorithm": algorithm, "env_steps": budget, "runs": len(scores),
                "mean": scores.mean() if len(scores) else np.nan,
                "std": scores.std() if len(scores) else np.nan,
                "paper": paper_reference(group[0].domain, task, algorithm, budget),
            })
    return pd.DataFrame(rows)


def score_matrices(curves: list[RunCurve], budget: int) -> dict[str, np.ndarray]:
    """algorithm -> normalised scores ``[runs, tasks]`` (rliable's layout), over the tasks every
    algorithm has; each task keeps as many runs as its smallest group has reached the budget."""
    groups = _groups(curves)
    algorithms = sorted({a for _, a in groups})
    tasks = sorted(t for t in {t for t, _ in groups} if all((t, a) in groups for a in algorithms))
    scores = {}
    for algorithm in algorithms:
        columns = []
        for task in tasks:
            group = groups[(task, algorithm)]
            columns.append([normalized_score(c.domain, task, c.score_at(budget)) for c in group])
        columns = [[s for s in col if not np.isnan(s)] for col in columns]
        scores[algorithm] = columns
    runs = min((len(col) for cols in scores.values() for col in cols), default=0)
    if runs == 0 or not tasks:
        raise CompareError(f"no task has runs of every algorithm that reached {budget} environment steps")
    return {a: np.array([col[:runs] for col in cols]).T for a, cols in scores.items()}


def aggregate_table(matrices: dict[str, np.ndarray], reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    from rliable import library as rly
    from rliable import metrics

    def all_aggregates(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_median(x), metrics.aggregate_mean(x),
                         metrics.aggregate_optimality_gap(x)])

    points, intervals = rly.get_interval_estimates(matrices, all_aggregates, reps=reps,
                                                   random_state=np.random.RandomState(seed))
    rows = []
    for algorithm in matrices:
        for i, name in enumerate(AGGREGATES):
            rows.append({"algorithm": algorithm, "metric": name, "value": points[algorithm][i],
                         "ci_low": intervals[algorithm][0, i], "ci_high": intervals[algorithm][1, i],
                         "runs": matrices[algorithm].shape[0], "tasks": matrices[algorithm].shape[1]})
    return pd.DataFrame(rows)


def bootstrap_band(values: np.ndarray, reps: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """95 % percentile bootstrap interval of the mean over runs; ``values`` [runs, steps]."""
    picks = rng.integers(0, values.shape[0], size=(reps, values.shape[0]))
    means = values[picks].mean(axis=1)  # [reps, steps]
    return np.percentile(means, 2.5, axis=0), np.percentile(means, 97.5, axis=0)


def curve_plots(curves: list[RunCurve], out_dir: Path, reps: int = 1000) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    tasks = sorted({c.task for c in curves})
    for task in tasks:
        bands = {}
        for (t, algorithm), group in sorted(_groups(curves).items()):
            if t != task:
                continue
            steps = np.array(sorted(set.intersection(*(set(c.steps.tolist()) for c in group))))
            if len(steps) == 0:
                continue
            values = np.array([[c.returns[c.steps == s][0] for s in steps] for c in group])
            low, high = bootstrap_band(values, reps, rng)
            bands[f"{algorithm} ({len(group)} runs)"] = (steps, values.mean(0), low, high)
        if bands:
            paths.append(learning_curves(bands, out_dir / f"curves_{task}.png",
                                         title=f"{task}: mean and 95% bootstrap CI over seeds"))
    return paths


def profile_plot(matrices: dict[str, np.ndarray], path: Path, reps: int = 1000) -> Path:
    from rliable import library as rly

    taus = np.linspace(0.0, 1.0, 51)
    profiles, cis = rly.create_performance_profile(matrices, taus, reps=reps)
    return performance_profiles(profiles, cis, taus, path, xlabel="normalised score τ")


def compare(client: MlflowClient, experiment: str, out_dir: Path, budgets: list[int], filter_string: str = "",
            reps: int = 2000) -> dict:
    """Writes per_task.{csv,md}, aggregate_<budget>.{csv,md} and PNG plots; returns the tables."""
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = fetch_runs(client, experiment, filter_string)
    per_task = per_task_table(curves, budgets)
    per_task.to_csv(out_dir / "per_task.csv", index=False)
    (out_dir / "per_task.md").write_text(_markdown(per_task))
    result = {"per_task": per_task, "aggregate": {}, "plots": curve_plots(curves, out_dir)}
    for budget in budgets:
        try:
            matrices = score_matrices(curves, budget)
        except CompareError:
            continue  # no run reached this budget
        table = aggregate_table(matrices, reps=reps)
        table.to_csv(out_dir / f"aggregate_{budget}.csv", index=False)
        (out_dir / f"aggregate_{budget}.md").write_text(_markdown(table))
        result["aggregate"][budget] = table
        result["plots"].append(profile_plot(matrices, out_dir / f"performance_profile_{budget}.png"))
    return result


def _groups(curves: list[RunCurve]) -> dict[tuple[str, str], list[RunCurve]]:
    groups: dict[tuple[str, str], list[RunCurve]] = {}
    for c in curves:
        groups.setdefault((c.task, c.algorithm), []).append(c)
    return groups


def _markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
    body = "".join("| " + " | ".join(_fmt(v) for v in row) + " |\n" for row in table.itertuples(index=False))
    return header + body


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
