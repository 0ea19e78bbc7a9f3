"""The statistics that answer "does one arm improve on another?", from per-arm ``[runs, tasks]`` score matrices.

- :func:`probability_of_improvement`: for every pair of arms X, Y, P(X > Y) (rliable: the Mann-Whitney
  U statistic of each task's runs, divided by runs_x * runs_y and averaged over tasks), with its 95 %
  stratified-bootstrap interval (runs resampled within each task, independently per arm).
- :func:`iqm_curves`: IQM over runs and tasks at every evaluation step the runs share, with bands.
- :func:`write_statistics`: the tables, figures (probability of improvement, IQM sample-efficiency
  curves, aggregate intervals) and the score matrices as CSV and ``.npz``, into ``compare``'s output.

Bootstrap draws are seeded (rliable draws from NumPy's global generator: see :func:`seeded_numpy`).
"""

from __future__ import annotations

from contextlib import contextmanager
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from rliable import library as rly
from rliable import metrics

from mlr_lightning.plots import aggregate_intervals, learning_curves

Matrices = dict[str, np.ndarray]  # arm -> normalised scores [runs, tasks] (rliable's layout)


@contextmanager
def seeded_numpy(seed: int):
    """rliable draws its bootstrap indices from NumPy's global generator (``np.random.choice``), not
    from the ``random_state`` it accepts: seed that, and restore it afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def arm_pairs(arms: list[str]) -> list[tuple[str, str]]:
    """Every unordered pair once, as (X, Y) for P(X > Y); a "Baseline" arm is always Y (the paper's claim)."""
    ordered = sorted(arms, key=lambda a: (a == "Baseline", a))
    return list(combinations(ordered, 2))


def probability_of_improvement(matrices: Matrices, reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per pair of arms: P(X > Y) with its 95 % stratified-bootstrap interval."""
    pairs = {f"{x},{y}": (matrices[x], matrices[y]) for x, y in arm_pairs(list(matrices))}
    if not pairs:
        return pd.DataFrame(columns=["X", "Y", "P(X > Y)", "ci_low", "ci_high", "runs X", "runs Y", "tasks"])
    with seeded_numpy(seed):
        points, intervals = rly.get_interval_estimates(pairs, metrics.probability_of_improvement, reps=reps)
    low_high = {key: np.ravel(interval) for key, interval in intervals.items()}  # rliable gives [2, 1] here
    return pd.DataFrame([{"X": key.split(",")[0], "Y": key.split(",")[1], "P(X > Y)": float(points[key]),
                          "ci_low": float(low_high[key][0]), "ci_high": float(low_high[key][1]),
                          "runs X": x.shape[0], "runs Y": y.shape[0], "tasks": x.shape[1]}
                         for key, (x, y) in pairs.items()])


def iqm_curves(matrices_by_step: dict[int, Matrices], reps: int = 1000, seed: int = 0) -> pd.DataFrame:
    """IQM and its 95 % stratified-bootstrap interval per arm at each step; the arms' matrices of a step
    must have the same tasks. Rows: step, arm, IQM, ci_low, ci_high."""
    steps = sorted(matrices_by_step)
    arms = sorted({arm for m in matrices_by_step.values() for arm in m})
    rows = []
    for arm in arms:
        at = [s for s in steps if arm in matrices_by_step[s]]
        runs = {matrices_by_step[s][arm].shape for s in at}
        if len(runs) != 1:  # one bootstrap over [runs, tasks, steps] needs one shape: else step by step
            with seeded_numpy(seed):
                estimates = [rly.get_interval_estimates({arm: matrices_by_step[s][arm]}, metrics.aggregate_iqm,
                                                        reps=reps) for s in at]
            points = [e[0][arm] for e in estimates]
            lows, highs = [e[1][arm][0] for e in estimates], [e[1][arm][1] for e in estimates]
        else:
            stacked = np.stack([matrices_by_step[s][arm] for s in at], axis=-1)  # [runs, tasks, steps]
            with seeded_numpy(seed):
                point, interval = rly.get_interval_estimates(
                    {arm: stacked}, lambda x: np.array([metrics.aggregate_iqm(x[..., i]) for i in range(x.shape[-1])]),
                    reps=reps)
            points, lows, highs = point[arm], interval[arm][0], interval[arm][1]
        rows += [{"step": s, "arm": arm, "IQM": float(p), "ci_low": float(lo), "ci_high": float(hi)}
                 for s, p, lo, hi in zip(at, points, lows, highs)]
    return pd.DataFrame(rows, columns=["step", "arm", "IQM", "ci_low", "ci_high"])


def write_score_matrices(matrices: Matrices, tasks: list[str], budget: int, out_dir: Path) -> list[Path]:
    """``scores_<budget>.npz`` (one ``[runs, tasks]`` array per arm, and ``tasks``) and ``scores_<budget>.csv``
    (one row per arm, run and task)."""
    npz, csv = out_dir / f"scores_{budget}.npz", out_dir / f"scores_{budget}.csv"
    np.savez(npz, tasks=np.array(tasks), **{arm: m for arm, m in matrices.items()})
    pd.DataFrame([{"arm": arm, "run": r, "task": task, "normalised score": m[r, t]}
                  for arm, m in matrices.items() for r in range(m.shape[0]) for t, task in enumerate(tasks)]
                 ).to_csv(csv, index=False)
    return [npz, csv]


def write_statistics(matrices_by_budget: dict[int, Matrices], tasks_by_budget: dict[int, list[str]],
                     aggregates: dict[int, pd.DataFrame], matrices_by_step: dict[int, Matrices], out_dir: Path,
                     reps: int = 2000, step_label: str = "environment steps") -> dict:
    """Probability of improvement per budget and pair of arms, IQM curves over the shared evaluation
    steps, aggregate-interval figures, score matrices; returns the tables, the files written and a text."""
    files, texts = [], []
    improvement = pd.concat([probability_of_improvement(m, reps).assign(env_steps=budget)
                             for budget, m in matrices_by_budget.items()], ignore_index=True) \
        if matrices_by_budget else pd.DataFrame()
    if len(improvement):
        improvement = improvement[["env_steps"] + [c for c in improvement.columns if c != "env_steps"]]
        improvement.to_csv(out_dir / "probability_of_improvement.csv", index=False)
        files.append(out_dir / "probability_of_improvement.csv")
        texts.append("Probability of improvement P(X > Y) over tasks (Mann-Whitney per task, averaged), 95% "
                     "stratified bootstrap CIs:\n\n" + markdown(improvement))
    for budget, matrices in matrices_by_budget.items():
        files += write_score_matrices(matrices, tasks_by_budget[budget], budget, out_dir)
    for budget, table in aggregates.items():
        files.append(aggregate_intervals(table, out_dir / f"aggregate_intervals_{budget}.png",
                                         title=f"Aggregates at {budget} {step_label} (95% stratified bootstrap CIs)"))
    curves = iqm_curves(matrices_by_step, reps=min(reps, 1000)) if matrices_by_step else pd.DataFrame()
    if len(curves):
        curves.to_csv(out_dir / "iqm_curves.csv", index=False)
        bands = {arm: (g["step"].to_numpy(), g["IQM"].to_numpy(), g["ci_low"].to_numpy(), g["ci_high"].to_numpy())
                 for arm, g in curves.groupby("arm")}
        files += [out_dir / "iqm_curves.csv",
                  learning_curves(bands, out_dir / "iqm_curves.png", ylabel="IQM normalised score",
                                  title="IQM over runs and tasks, 95% stratified bootstrap CI")]
    return {"improvement": improvement, "iqm_curves": curves, "files": files, "text": "\n".join(texts)}


def markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, table.columns)) + " |\n|" + "---|" * len(table.columns) + "\n"
    return header + "".join("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |\n"
                            for row in table.itertuples(index=False))
