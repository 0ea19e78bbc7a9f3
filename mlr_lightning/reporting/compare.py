"""Turn an MLflow experiment into the paper's tables and plots, counting every run once or saying why not.

Which runs count (:func:`select_runs`): one FINISHED run per (task, algorithm, seed). FAILED, KILLED
and still-RUNNING runs are excluded; of several finished runs of one seed the newest finished (latest
end time) counts. Every excluded run is listed with its reason (``runs.csv``, ``summary.md``).

Scores: a run's score at a budget is its last ``eval/return_mean`` at or before that budget, if the
run reached the budget. Per task: mean and sample std (ddof 1) over seeds beside the paper's number.
Aggregates over tasks, on normalised scores (DMC return / 1000, Atari human-normalised score): IQM,
median, mean and optimality gap with 95 % stratified bootstrap CIs from ``rliable``. rliable
bootstraps each algorithm's ``[runs, tasks]`` matrix on its own, so algorithms may have different
numbers of runs; within one algorithm every task needs the same number, and a budget where it does
not is refused with the counts (or, with ``common_seeds``, restricted to the seeds every task has).
Nothing is dropped silently: every run left out of a table is named in the notes.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlr_lightning.domains import DEFAULT_DOMAIN, DOMAINS
from mlr_lightning.plots import learning_curves, performance_profiles
from mlr_lightning.run_identity import NON_RESULT_KEYS, REPLACED_TAG
from mlr_lightning.training.cost import COST_PREFIX

EVAL_METRIC = "eval/return_mean"
AGGREGATES = ("IQM", "Median", "Mean", "Optimality gap")
STD = "std (ddof=1)"  # the per-task column: the sample standard deviation over seeds
COUNTED_STATUS = "FINISHED"
RUN_TAGS = ("task", "mlr", "seed")  # set by fit (training/tracking.py: run_tags)
DEFAULT_BY = ("mlr.enabled",)  # the arms: MLR and Baseline
# Keys that tell runs of one arm and task apart without making them another config.
PER_RUN_KEYS = ("seed", "env.task", *NON_RESULT_KEYS)
FILTER_QUOTING = ("string values in single quotes, dotted names in double quotes or backticks, e.g. "
                  "--filter \"params.\\\"mlr.mask_ratio\\\" = '0.5'\" or --filter \"params.`mlr.mask_ratio` = '0.5'\"")


class CompareError(ValueError):
    pass


@dataclass
class RunCurve:
    run_id: str
    name: str
    domain: str
    task: str
    algorithm: str  # "MLR" or "Baseline" ("" without an ``mlr`` tag)
    seed: str
    steps: np.ndarray  # environment steps of the evaluations
    returns: np.ndarray
    status: str = COUNTED_STATUS
    end_time: int = 0  # ms since the epoch; of two finished runs of one seed the later one counts
    start_time: int = 0
    params: dict[str, str] = field(default_factory=dict)  # the run's config as fit logged it (dotted keys)
    replaced: str = ""  # the ``replaced`` tag of sweep --restart-changed
    method: str = ""  # "MLR" or "Baseline" from the ``mlr`` tag; ``algorithm`` becomes the run's arm label
    cost: dict[str, float] = field(default_factory=dict)  # the run's cost/* metrics, without the prefix

    def __post_init__(self):
        self.method = self.method or self.algorithm

    @property
    def final_step(self) -> int | None:
        """The last evaluated environment step, or None without evaluations."""
        return int(self.steps.max()) if len(self.steps) else None

    def reaches(self, budget: int) -> bool:
        return self.final_step is not None and self.final_step >= budget

    def score_at(self, budget: int) -> float:
        """Last evaluation at or before ``budget``; NaN if the run did not reach it."""
        if not self.reaches(budget):
            return float("nan")
        return float(self.returns[self.steps <= budget][-1])

    def label(self) -> str:
        return f"{self.name} ({self.task}, {self.algorithm or '?'}, seed {self.seed or '?'})"


@dataclass
class RunSelection:
    counted: list[RunCurve]
    excluded: list[tuple[RunCurve, str]]  # (run, reason)
    notes: list[str] = field(default_factory=list)  # what the grouping did: arms split by differing keys

    def table(self) -> pd.DataFrame:
        """Every run: counted or not, and why not."""
        rows = [(c, "") for c in self.counted] + self.excluded
        return pd.DataFrame([{"run": c.name, "run_id": c.run_id, "task": c.task, "algorithm": c.algorithm, "seed": c.seed,
                              "status": c.status, "final_env_step": c.final_step, "counted": not reason, "reason": reason}
                             for c, reason in rows],
                            columns=["run", "run_id", "task", "algorithm", "seed", "status", "final_env_step", "counted",
                                     "reason"]).astype({"final_env_step": "Int64"})


def fetch_runs(client: MlflowClient, experiment: str, filter_string: str = "") -> list[RunCurve]:
    """Every run of ``experiment`` that matches ``filter_string``, whatever its status."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        known = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise CompareError(f"no MLflow experiment named {experiment!r}; experiments in this store: {known}")
    runs, token = [], None
    while True:
        try:
            page = client.search_runs([exp.experiment_id], filter_string=filter_string, max_results=1000,
                                      page_token=token)
        except MlflowException as err:
            reason = " ".join(str(err).split())[:200]
            raise CompareError(f"--filter {filter_string!r} is not an MLflow filter ({reason}); write "
                               f"{FILTER_QUOTING}") from None
        runs.extend(page)
        token = page.token
        if not token:
            break
    curves = []
    for run in runs:
        tags, info = run.data.tags, run.info
        history = sorted(client.get_metric_history(info.run_id, EVAL_METRIC), key=lambda m: m.step)
        curves.append(RunCurve(
            run_id=info.run_id,
            name=info.run_name,
            domain=tags.get("domain", DEFAULT_DOMAIN),
            task=tags.get("task", ""),
            algorithm={"on": "MLR", "off": "Baseline"}.get(tags.get("mlr", ""), ""),
            seed=tags.get("seed", ""),
            steps=np.array([m.step for m in history], dtype=np.int64),
            returns=np.array([m.value for m in history], dtype=float),
            status=info.status,
            end_time=info.end_time or 0,
            start_time=info.start_time or 0,
            params=dict(run.data.params),
            replaced=tags.get(REPLACED_TAG, ""),
            cost={key.removeprefix(COST_PREFIX): value for key, value in run.data.metrics.items()
                  if key.startswith(COST_PREFIX)},
        ))
    if not curves:
        raise CompareError(f"experiment {experiment!r} has no runs matching filter {filter_string!r}")
    return curves


def select_runs(curves: list[RunCurve], by: tuple[str, ...] = DEFAULT_BY) -> RunSelection:
    """One FINISHED run per (task, arm, config, seed); every other run is excluded with its reason.

    Arms are the values of the ``by`` keys (``mlr.enabled``: MLR and Baseline). Runs of one arm and
    task whose configs differ in other keys are never pooled: each run's arm label gets the values
    of those keys (``MLR [mlr.mask_ratio=0.25]``), so they are separate groups, and a note names the
    keys. Rule for duplicates, which are runs of the same config and seed: the newest finished
    (latest end time, then latest start) counts; the others are listed as superseded by it.
    """
    excluded, candidates = [], []
    for c in curves:
        missing = [key for key in by if key != "mlr.enabled" and key not in c.params]
        if c.status != COUNTED_STATUS:
            excluded.append((c, f"status {c.status}: only {COUNTED_STATUS} runs are counted"))
        elif c.replaced:
            excluded.append((c, f"replaced {c.replaced} (sweep --restart-changed)"))
        elif not (c.task and c.algorithm and c.seed):
            excluded.append((c, f"no {'/'.join(RUN_TAGS)} tags (not started by fit)"))
        elif missing:
            excluded.append((c, f"no param {missing[0]} (compare --by {missing[0]})"))
        elif c.final_step is None:
            excluded.append((c, f"no {EVAL_METRIC} logged"))
        else:
            candidates.append(c)
    notes = label_arms(candidates, by)
    by_seed: dict[tuple, list[RunCurve]] = {}
    for c in candidates:
        by_seed.setdefault((c.domain, c.task, c.algorithm, c.seed), []).append(c)
    counted = []
    for runs in by_seed.values():
        newest, *older = sorted(runs, key=lambda c: (c.end_time, c.start_time, c.run_id), reverse=True)
        counted.append(newest)
        excluded += [(c, f"duplicate of seed {c.seed} with the same config: the newer finished run {newest.name} "
                         f"({newest.run_id}) counts") for c in older]
    counted.sort(key=lambda c: (c.task, c.algorithm, _seed_key(c.seed)))
    return RunSelection(counted, excluded, notes)


def arm_of(curve: RunCurve, by: tuple[str, ...]) -> str:
    """The arm a run belongs to: ``MLR``/``Baseline`` for ``mlr.enabled``, ``key=value`` for other keys."""
    parts = [curve.method if key == "mlr.enabled" else f"{key}={curve.params[key]}" for key in by]
    return ", ".join(parts)


def setting(curve: RunCurve, by: tuple[str, ...]) -> dict[str, str]:
    """The run's config less its seed, the arm's keys and keys that do not change results."""
    return {k: v for k, v in curve.params.items() if k not in by and k not in PER_RUN_KEYS}


def label_arms(curves: list[RunCurve], by: tuple[str, ...]) -> list[str]:
    """Sets each run's ``algorithm`` to its arm, plus the values of any key in which the runs of that
    arm differ within a task (the same keys on every task, so the groups line up across tasks);
    returns notes naming those keys."""
    arms: dict[str, list[RunCurve]] = {}
    for c in curves:
        arms.setdefault(arm_of(c, by), []).append(c)
    notes = []
    for arm, runs in arms.items():
        varying: set[str] = set()
        for task in {c.task for c in runs}:
            settings = [setting(c, by) for c in runs if c.task == task]
            keys = set().union(*settings)
            varying |= {k for k in keys if len({s.get(k) for s in settings}) > 1}
        keys = sorted(varying)
        for c in runs:
            values = setting(c, by)
            c.algorithm = arm + (" [" + ", ".join(f"{k}={values.get(k, '-')}" for k in keys) + "]" if keys else "")
        if keys:
            groups: dict[str, list[str]] = {}
            for c in runs:
                groups.setdefault(c.algorithm, []).append(f"{c.task} s{c.seed}")
            notes.append(f"{arm}: its runs differ in {', '.join(keys)}, so they are separate groups, never pooled "
                         f"or taken for duplicates of one seed: " + "; ".join(f"{label} ({', '.join(sorted(set(r)))})"
                                                                              for label, r in sorted(groups.items())))
    return notes


def arm_configs(curves: list[RunCurve], by: tuple[str, ...]) -> pd.DataFrame:
    """Per arm and task: the config it stands for, as the keys in which the arms differ (all keys of
    every arm's common config are in ``arms.csv``)."""
    groups: dict[tuple[str, str], list[RunCurve]] = {}
    for c in curves:
        groups.setdefault((c.algorithm, c.task), []).append(c)
    common = {key: {k: v for k, v in setting(runs[0], ()).items() if k != "seed"
                    and all(setting(r, ()).get(k) == v for r in runs)} for key, runs in groups.items()}
    rows = []
    for (arm, task), config in sorted(common.items()):
        others = [c for (a, t), c in common.items() if t == task and a != arm]
        differing = sorted(k for k in config if any(o.get(k) != config[k] for o in others))
        rows.append({"arm": arm, "task": task, "runs": len(groups[(arm, task)]),
                     "config (keys where the arms differ)": ", ".join(f"{k}={config[k]}" for k in differing) or
                     ("(no config params logged)" if not config else "(the only arm)" if not others else
                      "(same config)"),
                     "config": config})
    return pd.DataFrame(rows, columns=["arm", "task", "runs", "config (keys where the arms differ)", "config"])


def final_steps(curves: list[RunCurve]) -> dict[int, int]:
    """Final evaluation step -> number of runs that end there: the budgets the runs reach."""
    steps: dict[int, int] = {}
    for c in curves:
        if c.final_step is not None:
            steps[c.final_step] = steps.get(c.final_step, 0) + 1
    return dict(sorted(steps.items()))


def default_budgets(curves: list[RunCurve]) -> list[int]:
    """Budgets from the data: every final evaluation step of the runs (0 excluded)."""
    return [step for step in final_steps(curves) if step > 0]


def reach_summary(curves: list[RunCurve]) -> str:
    ends = final_steps(curves)
    return "the runs' final evaluations are at " + ", ".join(
        f"{step} env steps ({n} run{'s' * (n != 1)})" for step, n in ends.items())


def budget_notes(curves: list[RunCurve], budgets: list[int]) -> list[str]:
    """Per budget: runs left out of its statistics because they end before it."""
    notes = []
    for budget in budgets:
        short = [c for c in curves if not c.reaches(budget)]
        if len(short) == len(curves):
            notes.append(f"no run reaches {budget} env steps; {reach_summary(curves)}")
        elif short:
            names = "; ".join(f"{c.label()} ends at {c.final_step}" for c in short)
            notes.append(f"at {budget} env steps {len(short)} of {len(curves)} runs are left out, they end earlier: {names}")
    return notes


def per_task_table(curves: list[RunCurve], budgets: list[int]) -> pd.DataFrame:
    """Mean and sample std (ddof 1) over the runs that reach each budget; no row where none does."""
    rows = []
    for (task, algorithm), group in _groups(curves).items():
        for budget in budgets:
            reached = [c for c in group if c.reaches(budget)]
            if not reached:
                continue
            scores = np.array([c.score_at(budget) for c in reached])
            rows.append({
                "task": task, "algorithm": algorithm, "env_steps": budget, "runs": len(scores),
                "seeds": ",".join(c.seed for c in reached),
                "mean": scores.mean(), STD: scores.std(ddof=1) if len(scores) > 1 else np.nan,
                "paper": DOMAINS[group[0].domain].paper_reference(task, algorithm, budget),
            })
    return pd.DataFrame(rows, columns=["task", "algorithm", "env_steps", "runs", "seeds", "mean", STD, "paper"])


def cost_table(curves: list[RunCurve]) -> pd.DataFrame:
    """What each arm cost on each task (:mod:`mlr_lightning.training.cost`): runs, mean wall hours,
    total GPU-hours, mean updates/s and env steps/s over its runs that logged a cost."""
    rows = []
    for (task, arm), group in sorted(_groups(curves).items(), key=lambda item: item[0][::-1]):
        costed = [c.cost for c in group if "wall_hours" in c.cost]
        mean = lambda key: float(np.mean([c[key] for c in costed])) if costed else float("nan")  # noqa: E731
        rows.append({"algorithm": arm, "task": task, "runs": len(group), "with cost": len(costed),
                     "wall hours (mean)": mean("wall_hours"),
                     "GPU-hours (total)": float(sum(c["device_hours"] for c in costed)) if costed else float("nan"),
                     "updates/s (mean)": mean("updates_per_s"), "env steps/s (mean)": mean("env_steps_per_s")})
    return pd.DataFrame(rows, columns=["algorithm", "task", "runs", "with cost", "wall hours (mean)", "GPU-hours (total)",
                                       "updates/s (mean)", "env steps/s (mean)"])


def score_matrices(curves: list[RunCurve], budget: int, common_seeds: bool = False) -> tuple[dict[str, np.ndarray], list[str]]:
    """algorithm -> normalised scores ``[runs, tasks]`` (rliable's layout) over the tasks where every
    algorithm has runs reaching ``budget``; and notes naming what was left out.

    Algorithms may differ in their number of runs. Within one algorithm every task must have the
    same number: otherwise a CompareError names the counts, unless ``common_seeds``, which keeps
    only the seeds that every task of that algorithm has (and names the runs it drops).
    """
    algorithms = sorted({c.algorithm for c in curves})
    groups = _groups([c for c in curves if c.reaches(budget)])
    all_tasks = sorted({t for t, _ in groups})
    tasks = [t for t in all_tasks if all((t, a) in groups for a in algorithms)]
    notes = [f"{t} is left out of the aggregate at {budget} env steps: only "
             f"{', '.join(a for a in algorithms if (t, a) in groups)} has runs there that reach it"
             for t in all_tasks if t not in tasks]
    if not tasks:
        raise CompareError(f"no task has runs of every algorithm ({', '.join(algorithms)}) that reach {budget} env steps; "
                           f"{reach_summary(curves)}")
    matrices = {}
    for algorithm in algorithms:
        runs = {t: {c.seed: c for c in groups[(t, algorithm)]} for t in tasks}
        if len({len(seeds) for seeds in runs.values()}) > 1:
            runs = _common_seeds(runs, algorithm, budget, notes) if common_seeds else _refuse_unequal(runs, algorithm, budget)
        matrices[algorithm] = np.array([[DOMAINS[c.domain].normalized_score(t, c.score_at(budget))
                                         for _, c in sorted(runs[t].items(), key=lambda item: _seed_key(item[0]))]
                                        for t in tasks]).T
    if len({m.shape[0] for m in matrices.values()}) > 1:
        notes.append(f"at {budget} env steps the algorithms have different numbers of runs per task ("
                     + ", ".join(f"{a} {m.shape[0]}" for a, m in matrices.items())
                     + "): rliable bootstraps each algorithm's runs separately, so each interval uses all of them")
    return matrices, notes


def _refuse_unequal(runs: dict[str, dict[str, RunCurve]], algorithm: str, budget: int):
    counts = "; ".join(f"{t}: {len(s)} (seeds {_seed_list(s)})" for t, s in runs.items())
    common = set.intersection(*(set(s) for s in runs.values()))
    raise CompareError(
        f"at {budget} env steps {algorithm} has unequal numbers of runs per task ({counts}). rliable's stratified "
        "bootstrap needs the same number of runs on every task of one algorithm (algorithms may differ). Run the "
        f"missing seeds, or pass --common-seeds (common_seeds=True) to aggregate only the seeds every task has "
        f"({_seed_list(common) or 'none'})")


def _common_seeds(runs: dict[str, dict[str, RunCurve]], algorithm: str, budget: int, notes: list[str]):
    common = set.intersection(*(set(s) for s in runs.values()))
    if not common:
        raise CompareError(f"at {budget} env steps no seed of {algorithm} has a run on every task")
    dropped = [c.label() for seeds in runs.values() for s, c in seeds.items() if s not in common]
    notes.append(f"common seeds: the aggregate at {budget} env steps uses {algorithm}'s seeds {_seed_list(common)}, "
                 f"which every task has; left out: {'; '.join(dropped)}")
    return {t: {s: c for s, c in seeds.items() if s in common} for t, seeds in runs.items()}


@contextmanager
def _seeded_numpy(seed: int):
    """rliable draws its bootstrap indices from NumPy's global generator (``np.random.choice``), not
    from the ``random_state`` it accepts: seed that, and restore it afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def aggregate_table(matrices: dict[str, np.ndarray], reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    from rliable import library as rly
    from rliable import metrics

    def all_aggregates(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_median(x), metrics.aggregate_mean(x),
                         metrics.aggregate_optimality_gap(x)])

    with _seeded_numpy(seed):
        points, intervals = rly.get_interval_estimates(matrices, all_aggregates, reps=reps)
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


def profile_plot(matrices: dict[str, np.ndarray], path: Path, budget: int, reps: int = 1000, seed: int = 0) -> Path:
    from rliable import library as rly

    taus = np.linspace(0.0, 1.0, 51)
    with _seeded_numpy(seed):
        profiles, cis = rly.create_performance_profile(matrices, taus, reps=reps)
    runs = ", ".join(f"{a} {m.shape[0]} runs" for a, m in matrices.items())
    tasks = next(iter(matrices.values())).shape[1]
    title = f"Performance profile at {budget} env steps\n({tasks} task{'s' * (tasks != 1)}; {runs})"
    return performance_profiles(profiles, cis, taus, path, xlabel="normalised score τ", title=title)


def compare(client: MlflowClient, experiment: str, out_dir: Path, budgets: list[int] | None = None,
            filter_string: str = "", reps: int = 2000, common_seeds: bool = False,
            by: tuple[str, ...] = DEFAULT_BY) -> dict:
    """Writes summary.md (everything below, as text), runs.csv (every run: counted or why not),
    per_task.{csv,md}, aggregate_<budget>.{csv,md} and PNG plots; returns the tables and notes.

    ``budgets`` None: every final evaluation step of the counted runs. Budgets that no counted run
    reaches are named in the notes; if none is reached at all, a CompareError says which the runs reach.
    """
    selection = select_runs(fetch_runs(client, experiment, filter_string), tuple(by))
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = selection.table()
    runs.to_csv(out_dir / "runs.csv", index=False)
    curves = selection.counted
    if not curves:
        reasons = "; ".join(f"{row.run}: {row.reason}" for row in runs.itertuples(index=False))
        raise CompareError(f"no run of experiment {experiment!r} can be counted ({reasons}); every run with its "
                           f"reason is in {out_dir / 'runs.csv'}")
    budgets = sorted(budgets) if budgets else default_budgets(curves)
    if not budgets:
        raise CompareError(f"no budget to score: {reach_summary(curves)}")
    if not any(c.reaches(b) for c in curves for b in budgets):
        raise CompareError(f"no run reaches {', '.join(map(str, budgets))} env steps; {reach_summary(curves)}. "
                           "Choose budgets among these (compare --budgets, BUDGETS in the notebook), or give none to use them")
    notes = selection.notes + budget_notes(curves, budgets)
    arms = arm_configs(curves, tuple(by))
    _config_rows(arms).to_csv(out_dir / "arms.csv", index=False)
    per_task = per_task_table(curves, budgets)
    per_task.to_csv(out_dir / "per_task.csv", index=False)
    (out_dir / "per_task.md").write_text(_markdown(per_task))
    cost = cost_table(curves)
    cost.to_csv(out_dir / "cost.csv", index=False)
    result = {"runs": runs, "excluded": runs[~runs["counted"]].reset_index(drop=True), "per_task": per_task,
              "cost": cost,
              "arms": arms.drop(columns="config"),
              "aggregate": {}, "notes": notes, "budgets": budgets, "plots": curve_plots(curves, out_dir)}
    for budget in budgets:
        if not any(c.reaches(budget) for c in curves):
            continue
        try:
            matrices, matrix_notes = score_matrices(curves, budget, common_seeds)
        except CompareError as err:
            notes.append(f"no aggregate at {budget} env steps: {err}")
            continue
        notes.extend(matrix_notes)
        table = aggregate_table(matrices, reps=reps)
        table.to_csv(out_dir / f"aggregate_{budget}.csv", index=False)
        (out_dir / f"aggregate_{budget}.md").write_text(_markdown(table))
        result["aggregate"][budget] = table
        result["plots"].append(profile_plot(matrices, out_dir / f"performance_profile_{budget}.png", budget,
                                            reps=min(reps, 1000)))
    (out_dir / "summary.md").write_text(summary_text(result))
    return result


def summary_text(result: dict) -> str:
    """The report ``compare`` prints: runs counted and excluded, per-task table, notes, aggregates."""
    runs, excluded = result["runs"], result["excluded"]
    parts = [f"Runs: {len(runs) - len(excluded)} counted (one {COUNTED_STATUS} run per task, arm, config and seed; "
             f"of duplicates of one config the newest finished), {len(excluded)} excluded."]
    if len(excluded):
        parts.append(_markdown(excluded[["run", "task", "algorithm", "seed", "status", "reason"]]))
    if "arms" in result:
        parts.append("Arms: the config each stands for (every key of it in arms.csv):\n\n" + _markdown(result["arms"]))
    parts.append(f"Per task: mean and sample std (ddof=1) over seeds at each budget (env steps), beside the paper's "
                 f"mean±std:\n\n{_markdown(result['per_task'])}")
    if "cost" in result and result["cost"]["with cost"].any():  # runs logged before fit measured cost have none
        parts.append("Cost per arm and task (over all attempts of each counted run; GPU-hours are wall hours x GPUs, "
                     f"0 on CPU):\n\n{_markdown(result['cost'])}")
    if result["notes"]:
        parts.append("Notes:\n" + "".join(f"- {note}\n" for note in result["notes"]))
    for budget, table in result["aggregate"].items():
        parts.append(f"Aggregate over tasks at {budget} env steps (normalised scores, 95% stratified bootstrap CIs):\n\n"
                     + _markdown(table))
    return "\n".join(parts)


def _config_rows(arms: pd.DataFrame) -> pd.DataFrame:
    """arm, task, key, value: the whole config of each arm on each task, one key a row."""
    rows = [{"arm": row.arm, "task": row.task, "key": key, "value": value}
            for row in arms.itertuples(index=False) for key, value in sorted(row.config.items())]
    return pd.DataFrame(rows, columns=["arm", "task", "key", "value"])


def _groups(curves: list[RunCurve]) -> dict[tuple[str, str], list[RunCurve]]:
    groups: dict[tuple[str, str], list[RunCurve]] = {}
    for c in curves:
        groups.setdefault((c.task, c.algorithm), []).append(c)
    return groups


def _seed_key(seed: str) -> tuple:
    return (0, int(seed), "") if seed.lstrip("-").isdigit() else (1, 0, seed)


def _seed_list(seeds) -> str:
    return ",".join(sorted(seeds, key=_seed_key))


def _markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
    body = "".join("| " + " | ".join(_fmt(v) for v in row) + " |\n" for row in table.itertuples(index=False))
    return header + body


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
