"""What each trial has done, read from where ``fit`` writes it: ``metrics.csv``, snapshots, MLflow.

The sweep keeps no state of its own: whether a trial is finished, resumable or new is decided from
the trial's run directory and its MLflow run every time, so a sweep whose driver died, or that is
run again after some trials were run by hand, picks up exactly where the runs are.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

from mlr_lightning.sweep.spec import SweepPlan, Trial
from mlr_lightning.training.snapshot import checkpoints_dir, has_snapshot, latest_snapshot, snapshot_agent_steps

EVAL_COLUMN = "eval/return_mean"
STATUSES = ("pending", "running", "finished", "failed")


def read_progress(run_dir: Path) -> tuple[int | None, float | None]:
    """(latest environment step, latest evaluation return) in ``<run_dir>/metrics.csv``."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return None, None
    env_steps, eval_return = None, None
    try:
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("step"):
                    env_steps = max(env_steps or 0, int(float(row["step"])))
                if row.get(EVAL_COLUMN):
                    eval_return = float(row[EVAL_COLUMN])
    except (OSError, ValueError, csv.Error):  # being rewritten by the run: keep what was read
        pass
    return env_steps, eval_return


def finished_run_names(client, experiment: str) -> set[str]:
    """Names of the runs of ``experiment`` that ``fit`` completed (MLflow status FINISHED)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return set()
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=50_000)
    return {run.info.run_name for run in runs}


def split_finished(plan: SweepPlan, client) -> tuple[list[Trial], list[Trial]]:
    """(finished trials, the others). With MLflow, finished means a FINISHED run of the trial's name
    (``fit`` marks it so only after the final evaluation, snapshot and artifacts); without, a final
    snapshot."""
    if client is not None:
        names = finished_run_names(client, plan.experiment)
        done = [t.name in names for t in plan.trials]
    else:
        done = [has_final_snapshot(t) for t in plan.trials]
    return ([t for t, d in zip(plan.trials, done) if d], [t for t, d in zip(plan.trials, done) if not d])


def has_final_snapshot(trial: Trial) -> bool:
    """Without MLflow: the newest snapshot's stream counter has reached the end of training."""
    snapshot = latest_snapshot(checkpoints_dir(trial.run_dir), verify=False)
    return snapshot is not None and snapshot_agent_steps(snapshot) >= trial.final_agent_steps


def snapshot_exists(run_dir: Path) -> bool:
    return has_snapshot(run_dir)


@dataclass
class TrialRow:
    trial: Trial
    status: str = "pending"
    env_steps: int | None = None
    eval_return: float | None = None
    attempts: int = 0
    note: str = ""  # "done earlier", "resumes from a snapshot", the error of a failed trial


class ProgressTable:
    """The sweep's live table, printed on every status change and at least every ``every_s`` seconds,
    and kept in ``<sweep_dir>/trials.md``. Large sweeps print the counts and the trials that are
    running or failed; the file always lists every trial."""

    FULL_TABLE_MAX_ROWS = 24

    def __init__(self, trials: list[Trial], path: Path | None = None, every_s: float = 30.0, printer=print):
        self.rows = {t.name: TrialRow(t) for t in trials}
        self.path, self.every_s, self.printer = path, every_s, printer
        self._last_print = 0.0
        self._changed = True

    def set(self, name: str, status: str | None = None, **fields) -> None:
        row = self.rows[name]
        if status is not None and status != row.status:
            row.status = status
            self._changed = True
        for key, value in fields.items():
            if value is not None:
                setattr(row, key, value)

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.rows.values()) for s in STATUSES}

    def maybe_print(self, force: bool = False) -> None:
        if force or self._changed or time.monotonic() - self._last_print >= self.every_s:
            self.printer(self.render(full=len(self.rows) <= self.FULL_TABLE_MAX_ROWS), flush=True)
            if self.path is not None:
                self.path.write_text(self.render(full=True) + "\n")
            self._last_print, self._changed = time.monotonic(), False

    def render(self, full: bool = True) -> str:
        counts = self.counts()
        head = (f"[{time.strftime('%H:%M:%S')}] " + " | ".join(f"{s} {counts[s]}" for s in STATUSES)
                + f" | of {len(self.rows)} trials")
        rows = [r for r in self.rows.values() if full or r.status in ("running", "failed")]
        if not rows:
            return head
        lines = ["| trial | status | env steps | last eval return | attempts | note |", "|---|---|---|---|---|---|"]
        for r in rows:
            steps = f"{r.env_steps if r.env_steps is not None else '-'} / {r.trial.final_env_steps}"
            ret = f"{r.eval_return:.1f}" if r.eval_return is not None else "-"
            lines.append(f"| {r.trial.name} | {r.status} | {steps} | {ret} | {r.attempts} | {r.note} |")
        return head + "\n" + "\n".join(lines)
