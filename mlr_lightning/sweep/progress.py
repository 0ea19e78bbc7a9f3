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

from omegaconf import DictConfig, OmegaConf

from mlr_lightning.config import config_differences
from mlr_lightning.domains import domain_of
from mlr_lightning.run_identity import HASH_TAG, NON_RESULT_KEYS, REPLACED_TAG, config_hash, result_differences
from mlr_lightning.sweep.spec import SweepPlan, Trial
from mlr_lightning.training.snapshot import has_snapshot, latest_run_agent_steps
from mlr_lightning.training.tracking import config_params

EVAL_COLUMN = "eval/return_mean"
STATUSES = ("pending", "running", "finished", "failed")
INPUT_ERROR_PREFIX = "refused its input"  # a failed trial's note when fit exited 2: not retried


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


def finished_runs(client, experiment: str) -> dict[str, list]:
    """Run name -> the runs of ``experiment`` that ``fit`` completed (MLflow status FINISHED)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    runs: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                                  max_results=50_000):
        runs.setdefault(run.info.run_name, []).append(run)
    return runs


@dataclass
class Changed:
    """A planned trial whose existing run was made with another config."""

    trial: Trial
    differences: list[str]  # "key: old -> new"


def split_finished(plan: SweepPlan, client) -> tuple[list[Trial], list[Trial], list[Changed]]:
    """(finished trials, trials to run, trials whose existing run has another config).

    Finished means a FINISHED MLflow run of the trial's name *and* config hash (``fit`` marks it so
    only after the final evaluation, snapshot and artifacts); without MLflow, a final snapshot of the
    same config. Changed: a finished run of the name with another config hash, or a snapshot whose
    config ``fit --resume`` would refuse (a changed result-affecting key, or any key a resume may not
    change)."""
    finished, todo, changed = [], [], []
    runs = finished_runs(client, plan.experiment) if client is not None else {}
    for trial in plan.trials:
        saved = saved_config(trial.run_dir)
        if client is not None:
            named = [run for run in runs.get(trial.name, []) if REPLACED_TAG not in run.data.tags]
            hashes = {run_hash(run, saved, trial) for run in named}
            done, done_other = trial.config_hash in hashes, bool(hashes - {trial.config_hash})
        else:
            done = has_final_snapshot(trial) and saved is not None and config_hash(saved) == trial.config_hash
            done_other = has_final_snapshot(trial) and not done
        if done:
            finished.append(trial)
        elif done_other:
            differences = (result_differences(saved, trial.cfg, domain_of(trial.cfg).schema) if saved is not None
                           else param_differences(named[0], trial))
            changed.append(Changed(trial, differences or [f"config hash {sorted(hashes)} -> {trial.config_hash}"]))
        elif refused := (config_differences(saved, trial.cfg, domain_of(trial.cfg).schema)
                         if saved is not None and has_snapshot(trial.run_dir) else []):
            changed.append(Changed(trial, refused))  # fit --resume would refuse it
        else:
            todo.append(trial)
    return finished, todo, changed


def run_hash(run, saved: DictConfig | None, trial: Trial) -> str:
    """A finished run's config hash: its tag; for a run logged before fit recorded one, that of its
    run directory's config, else the trial's own if its MLflow params show no difference."""
    if HASH_TAG in run.data.tags:
        return run.data.tags[HASH_TAG]
    if saved is not None:
        return config_hash(saved)
    return trial.config_hash if not param_differences(run, trial) else "unknown"


def saved_config(run_dir: Path) -> DictConfig | None:
    """The config a trial's run was made with (``<run_dir>/config.yaml``), None if there is none."""
    path = Path(run_dir) / "config.yaml"
    return OmegaConf.load(path) if path.is_file() else None


def param_differences(run, trial: Trial) -> list[str]:
    """The result-affecting keys whose MLflow params differ from the trial's config (where the run
    directory is on another node)."""
    logged = run.data.params
    return [f"{key}: {logged.get(key)!r} -> {value!r}" for key, value in sorted(config_params(trial.cfg).items())
            if key not in NON_RESULT_KEYS and logged.get(key) != value]


def changed_message(changed: list[Changed], experiment: str) -> str:
    """One line: which trials, which keys, and the two ways on."""
    first = changed[0]
    others = f" (and {len(changed) - 1} more trial{'s' * (len(changed) > 2)})" if len(changed) > 1 else ""
    return (f"trial {first.trial.name}{others} already has a run of another config in experiment {experiment!r}, "
            f"which differs in: {'; '.join(first.differences)}. Nothing was run. Give the new config its own "
            f"experiment (experiment=NEW_NAME), or pass --restart-changed to start those trials afresh "
            f"(their old files move to <run_dir>/previous-attempts/, their MLflow runs are kept and tagged replaced)")


def has_final_snapshot(trial: Trial) -> bool:
    """Without MLflow: the newest snapshot's stream counter has reached the end of training."""
    agent_steps = latest_run_agent_steps(trial.run_dir)
    return agent_steps is not None and agent_steps >= trial.final_agent_steps


def snapshot_env_steps(trial: Trial) -> int | None:
    """Environment steps of the trial's newest snapshot: where a resume continues from."""
    agent_steps = latest_run_agent_steps(trial.run_dir)
    return None if agent_steps is None else agent_steps * trial.final_env_steps // max(1, trial.final_agent_steps)


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
        self._last_text = ""

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
        """Prints on a change, every ``every_s`` seconds, or when forced unless nothing changed since
        the last print (so the final table is printed once)."""
        due = self._changed or time.monotonic() - self._last_print >= self.every_s
        if self._unprinted() if force else due:
            text = self.render(full=len(self.rows) <= self.FULL_TABLE_MAX_ROWS)
            self.printer(text, flush=True)
            if self.path is not None:
                self.path.write_text(self.render(full=True) + "\n")
            self._last_print, self._changed, self._last_text = time.monotonic(), False, _without_clock(text)

    def _unprinted(self) -> bool:
        return _without_clock(self.render(full=len(self.rows) <= self.FULL_TABLE_MAX_ROWS)) != self._last_text

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


def _without_clock(text: str) -> str:
    return text.split("] ", 1)[-1]
