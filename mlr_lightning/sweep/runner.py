"""The sweep driver: checks, then Ray Tune runs the unfinished trials, then the comparison.

Ray Tune does the scheduling (each trial placed where its ``cpus``/``gpus`` fit, fractional GPUs
shared), the retries (``FailureConfig(max_failures)``) and the graceful Ctrl-C; a trial is one
``fit --resume auto`` process (:mod:`mlr_lightning.sweep.trial`). Everything that can be wrong with
the input is checked before Ray starts. Finished trials are skipped (see
:mod:`mlr_lightning.sweep.progress`), so the same command continues a sweep after Ctrl-C, a dead
driver or failed trials.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import time
from pathlib import Path

from mlr_lightning.sweep.mlflow_store import close_orphans, is_local_uri, open_store, tag_replaced
from mlr_lightning.sweep.progress import (
    INPUT_ERROR_PREFIX,
    ProgressTable,
    changed_message,
    read_progress,
    snapshot_env_steps,
    split_finished,
)
from mlr_lightning.sweep.spec import SweepError, SweepPlan, Trial
from mlr_lightning.training.cost import read_cost
from mlr_lightning.training.preflight import check_connects
from mlr_lightning.training.run_dir import RunDirError, RunLock, move_to_previous_attempts
from mlr_lightning.training.snapshot import has_snapshot

STOP_TIMEOUT_S = 600.0  # after Ctrl-C, how long the driver waits for the stopped trials to save
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def sweep_dir(plan: SweepPlan) -> Path:
    """Where the sweep keeps its own files: Ray Tune's records, the trial table, the trial locks;
    ``sweep-<experiment>``, or the experiment's own name where it already says so (sweep-quickstart)."""
    name = plan.experiment if plan.experiment.startswith("sweep") else f"sweep-{plan.experiment}"
    return plan.output_dir / name


def trial_log(plan: SweepPlan, trial: Trial) -> Path:
    """The output of every attempt of a trial's fit process, each after a header line."""
    return sweep_dir(plan) / "logs" / f"{trial.name}.log"


def compare_dir(plan: SweepPlan) -> Path:
    return plan.output_dir / f"compare-{plan.experiment}"  # where ``compare --experiment`` writes too


# --------------------------------------------------------------------------- checks (no Ray yet)


def check_tracking_for_cluster(plan: SweepPlan, address: str | None) -> None:
    """On a cluster every node logs to the store: an MLflow server, not a file on this machine."""
    if address and plan.tracking_uri and is_local_uri(plan.tracking_uri):
        raise SweepError(f"tracking.uri is {plan.tracking_uri}, a file on this machine, but --address runs trials on "
                         "other nodes: start an MLflow server every node reaches and pass tracking.uri=http://HOST:5000 "
                         "(or set MLFLOW_TRACKING_URI)")


def local_node() -> dict[str, float]:
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def check_resources(plan: SweepPlan, nodes: list[dict[str, float]], where: str) -> None:
    """Fails unless at least one node can hold one trial."""
    cpus, gpus = plan.sweep.cpus, plan.sweep.gpus
    if any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        return
    most_cpus, most_gpus = max(n.get("CPU", 0) for n in nodes), max(n.get("GPU", 0) for n in nodes)
    key = "resources.cpus" if most_cpus < cpus else "resources.gpus"
    raise SweepError(f"{key} in {plan.sweep.source}: no node can run a trial with cpus={cpus:g}, gpus={gpus:g}; "
                     f"{where} has at most {most_cpus:g} CPUs and {most_gpus:g} GPUs per node")


def trial_spec(trial: Trial, plan: SweepPlan) -> dict:
    """What a trial's actor (:class:`~mlr_lightning.sweep.trial.FitTrial`) needs: plain data, for any node."""
    return {
        "name": trial.name,
        "args": trial.argv()[1:],  # the actor runs them with its own interpreter
        "cwd": os.getcwd(),
        "run_dir": str(trial.run_dir),
        "lock": str(sweep_dir(plan) / "locks" / f"{trial.name}.lock"),
        "log": str(trial_log(plan, trial)),
        "threads": max(1, int(plan.sweep.cpus)),
        "tracking_uri": plan.tracking_uri,
    }


# ------------------------------------------------------------------------------------ driver


def run_on_ray(plan: SweepPlan, address: str | None = None, progress_every_s: float = 30.0,
               restart_changed: bool = False, verbose: bool = False, notes: list[str] = ()) -> int:
    """Runs the unfinished trials; returns 0 (all finished), 1 (some failed) or 130 (interrupted).
    ``notes``: one line per trial that has one (the same text for many trials is printed once)."""
    started = time.monotonic()
    check_tracking_for_cluster(plan, address)
    if address:
        check_ray_address(address)
    if not address:
        check_resources(plan, [local_node()], "this machine")
    client = open_store(plan)
    finished, todo = settle_existing_runs(plan, client, restart_changed)
    table = ProgressTable(plan.trials, every_s=progress_every_s)
    for trial in finished:
        env_steps, eval_return = read_progress(trial.run_dir)
        table.set(trial.name, "finished", env_steps=env_steps, eval_return=eval_return, note="done earlier")
    for trial in todo:
        if has_snapshot(trial.run_dir):
            table.set(trial.name, env_steps=snapshot_env_steps(trial), note="resumes from its snapshot")
    print(f"Sweep {plan.sweep.source}: {len(plan.trials)} trials into MLflow experiment {plan.experiment!r} "
          f"({plan.tracking_uri or 'MLflow off'}); {len(finished)} finished earlier, {len(todo)} to run, "
          f"each with cpus={plan.sweep.cpus:g} gpus={plan.sweep.gpus:g}, up to {plan.sweep.max_failures} retries.",
          flush=True)
    for note in dict.fromkeys(notes):  # each trial's fit prints its notes into its log; here each is said once
        print(f"{notes.count(note)} trial(s): {note}", flush=True)
    interrupted = _tune(plan, todo, table, client, address, verbose) if todo else False
    table.maybe_print(force=True)
    counts = table.counts()
    if interrupted:
        print(f"Interrupted: the running trials saved a snapshot. Run the same command again to continue "
              f"({counts['finished']} of {len(plan.trials)} trials finished).", file=sys.stderr)
        return 130
    if client is not None and counts["finished"]:
        _compare(plan, client)
    print(end_summary(plan, table, time.monotonic() - started))
    failed = [r for r in table.rows.values() if r.status == "failed"]
    for row in failed:
        print(f"failed: {row.trial.name}: {row.note}", file=sys.stderr)
    if failed:
        refused = sum(r.note.startswith(INPUT_ERROR_PREFIX) for r in failed)
        advice = []
        if refused:
            advice.append(f"{refused} refused their input (fit exit 2, not retried): fix what the message names, "
                          "then run the same command again")
        if len(failed) > refused:
            advice.append(f"{len(failed) - refused} crashed on every one of {plan.sweep.max_failures + 1} attempts: "
                          "see the reasons above and their logs, then run the same command again to retry them")
        print(f"{len(failed)} trial(s) failed ({'; '.join(advice)}); logs: {sweep_dir(plan) / 'logs'}", file=sys.stderr)
        return 1
    return 0


def settle_existing_runs(plan: SweepPlan, client, restart_changed: bool) -> tuple[list[Trial], list[Trial]]:
    """(finished trials, trials to run). A trial whose existing run has another config stops the sweep
    with a SweepError before anything runs, or with ``restart_changed`` starts afresh: its run
    directory's files move to ``previous-attempts/`` and its MLflow runs are tagged replaced. First, the
    trials' runs left RUNNING by a process that is gone are closed (:func:`close_orphans`), saying so."""
    if client is not None and (closed := close_orphans(client, plan.experiment, plan.trials)):
        print(f"closed {len(closed)} MLflow run(s) left RUNNING by a process that is gone: {', '.join(closed)}",
              flush=True)
    finished, todo, changed = split_finished(plan, client)
    if changed and not restart_changed:
        raise SweepError(changed_message(changed, plan.experiment))
    for item in changed:
        try:
            lock = RunLock(item.trial.run_dir)  # a fit still running in it refuses the move
        except RunDirError as err:
            raise SweepError(f"--restart-changed: {err}") from None
        try:
            move_to_previous_attempts(item.trial.run_dir)
        finally:
            lock.release()
        if client is not None:
            tag_replaced(client, plan.experiment, item.trial.name, item.trial.config_hash)
        print(f"restarting {item.trial.name} with the changed config ({'; '.join(item.differences)})", flush=True)
    restarted = {item.trial.name for item in changed}
    return finished, [t for t in plan.trials if t in todo or t.name in restarted]


def end_summary(plan: SweepPlan, table: ProgressTable, wall_s: float) -> str:
    """What ``fit`` says at its end, for the sweep: counts, time, cost per run, where to look."""
    counts = table.counts()
    ran = [r for r in table.rows.values() if r.attempts]
    lines = [f"Sweep done in {_duration(wall_s)}: {counts['finished']} of {len(plan.trials)} trials finished"
             + (f", {counts['failed']} failed" if counts["failed"] else "")
             + (f"; {len(ran)} ran now, {_duration(wall_s / len(ran))} of sweep time per trial run"
                if ran else "; nothing to run")
             + f" (resources per trial: cpus={plan.sweep.cpus:g} gpus={plan.sweep.gpus:g})."]
    lines.extend(cost_lines(plan))
    lines.append(f"Trial table: {sweep_dir(plan) / 'trials.md'}; fit logs: {sweep_dir(plan) / 'logs'}")
    if plan.tracking_uri:
        where = (f"mlflow ui --backend-store-uri {plan.tracking_uri}" if plan.tracking_uri.startswith("sqlite:")
                 else f"open {plan.tracking_uri}")
        lines.append(f"MLflow: {where}  (experiment {plan.experiment!r})")
    return "\n".join(lines)


def cost_lines(plan: SweepPlan) -> list[str]:
    """What each arm (a trial's name without its seed) cost, from its runs' ``cost.json``: over all
    attempts of every run that has one (a trial on another node's disk has none here)."""
    arms: dict[str, list[dict]] = {}
    for trial in plan.trials:
        cost = read_cost(trial.run_dir)
        if cost is not None:
            arms.setdefault(trial.name.removesuffix(f"-s{trial.cfg.seed}"), []).append(cost)
    if not arms:
        return []
    lines = ["Cost per arm (each run over all its attempts; GPU-hours are wall hours x GPUs, 0 on CPU):"]
    for arm, costs in arms.items():
        mean = lambda key: sum(c["metrics"][key] for c in costs) / len(costs)  # noqa: E731
        lines.append(f"  {arm}: {len(costs)} run(s), {_duration(sum(c['wall_s'] for c in costs) / len(costs))} "
                     f"of training per run, {sum(c['metrics']['device_hours'] for c in costs):.3f} GPU-hours in all, "
                     f"{mean('updates_per_s'):.2f} updates/s, {mean('env_steps_per_s'):.1f} env steps/s")
    return lines


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class _NoTunerRestoreHint(logging.Filter):
    """Tune suggests ``Tuner.restore`` after Ctrl-C; here the same sweep command continues instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()


def check_ray_address(address: str) -> None:
    """``--address``: ``auto``, or a head's ``HOST:PORT`` (``ray://`` for Ray Client) that accepts a
    connection within seconds; Ray itself would retry for minutes without a word."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"--address {address}: expected auto or HOST:PORT of the Ray head (its GCS port, 6379 "
                         "unless `ray start --head --port` said otherwise)")
    check_connects(f"--address {address}", host.strip("[]"), int(port),
                   "start the head with `ray start --head`, or give its HOST:PORT (or auto on one of its nodes)")


def _connect(address: str | None, verbose: bool = False) -> None:
    """A Ray instance on this machine for the sweep's lifetime, or the cluster at ``address``."""
    import ray

    # Workers import this package from where the driver does (a checkout on PYTHONPATH, say).
    pythonpath = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
    try:
        # A local instance listens on loopback only: nothing of a sweep on one machine leaves it.
        local = {"_node_ip_address": "127.0.0.1"} if address is None else {}
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 logging_level=logging.INFO if verbose else logging.ERROR,
                 runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **local)
    except ConnectionError as err:
        cause = " ".join(str(err.__cause__ or "").split())[:300]
        hint = ("; the cluster uses token authentication: export RAY_AUTH_MODE=token (token in ~/.ray/auth_token "
                "or RAY_AUTH_TOKEN)" if "uthentication" in cause else "")
        raise SweepError(f"--address {address}: {err}" + (f" ({cause})" if cause else "") + hint) from None


def _tune(plan: SweepPlan, todo: list[Trial], table: ProgressTable, client, address: str | None,
          verbose: bool = False) -> bool:
    """Runs ``todo`` on Ray Tune; True if interrupted (Ctrl-C)."""
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # the table and the trials' logs say it
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no Tune tables beside ours
    import ray
    from ray import tune

    from mlr_lightning.sweep.trial import FitTrial, SweepProgress, trial_name

    logging.getLogger("ray.tune.tune").addFilter(_NoTunerRestoreHint())
    _connect(address, verbose)
    try:
        if address:
            nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
            check_resources(plan, nodes, f"the Ray cluster at {address}")
        directory = sweep_dir(plan)
        directory.mkdir(parents=True, exist_ok=True)
        table.path = directory / "trials.md"
        specs = {t.name: trial_spec(t, plan) for t in todo}
        tuner = tune.Tuner(
            tune.with_resources(FitTrial, {"cpu": plan.sweep.cpus, "gpu": plan.sweep.gpus}),
            param_space={"trial": tune.grid_search([specs[t.name] for t in todo])},
            tune_config=tune.TuneConfig(trial_name_creator=trial_name, trial_dirname_creator=trial_name,
                                        reuse_actors=False),
            run_config=tune.RunConfig(name="tune", storage_path=str(directory / "ray"), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=plan.sweep.max_failures),
                                      # A trial's state is fit's own snapshots: Tune saves none.
                                      checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
                                      callbacks=[SweepProgress(table, client, plan.experiment)]),
        )
        tuner.fit()
    finally:
        ray.shutdown()
    unfinished = [r for r in table.rows.values() if r.status in ("pending", "running")]
    for row in unfinished:  # what the next run continues from: the snapshots, not the last progress report
        steps = snapshot_env_steps(row.trial)
        row.status, row.env_steps = "pending", steps
        row.note = ("stopped; resumes from its snapshot on the next run" if steps is not None else
                    "stopped before its first snapshot; starts afresh on the next run" if row.attempts else
                    "not started")
    _wait_for_trial_processes(plan, [r.trial for r in unfinished])
    return bool(unfinished)


def _wait_for_trial_processes(plan: SweepPlan, trials: list[Trial], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """After Ctrl-C: return once every stopped trial's process has saved and exited (its lock is free)."""
    deadline = time.monotonic() + timeout_s
    for trial in trials:
        path = sweep_dir(plan) / "locks" / f"{trial.name}.lock"
        if not path.exists():
            continue
        with open(path, "a") as handle:
            while time.monotonic() < deadline:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(0.5)


def compare_by(plan: SweepPlan) -> tuple[str, ...]:
    """The keys whose values are the end-of-sweep comparison's arms: the sweep's axes (an ablation's
    values, or MLR on/off); empty for a sweep without axes."""
    return tuple(plan.sweep.axes)


def _compare(plan: SweepPlan, client) -> None:
    from mlr_lightning.reporting.compare import DEFAULT_BY, CompareError, compare

    out = compare_dir(plan)
    try:
        compare(client, plan.experiment, out, plan.budgets, by=compare_by(plan) or DEFAULT_BY)
    except CompareError as err:
        print(f"compare: {err}", file=sys.stderr)
        return
    print((out / "summary.md").read_text())
    print(f"Tables and plots: {out}")


# ---------------------------------------------------------------------------------- dry run


def format_plan(plan: SweepPlan) -> str:
    """The ``--dry-run`` table: every trial with its own overrides, and what all of them share."""
    sweep, trials = plan.sweep, plan.trials
    variants = max(1, len(trials) // (len(sweep.configs) * len(sweep.seeds)))
    shared = [o for o in trials[0].overrides if o not in trials[0].variant and not o.startswith("run_name=")]
    lines = [
        f"{len(trials)} trials = {len(sweep.configs)} configs x {len(sweep.seeds)} seeds x {variants} variants "
        f"({sweep.source})",
        f"resources per trial: cpus={sweep.cpus:g} gpus={sweep.gpus:g}; retries per trial: {sweep.max_failures}",
        *([f"GPU-hours: {len(trials)} trials x {sweep.gpu_hours_per_trial:g} per trial (gpu_hours_per_trial, as the sweep "
           f"file states it) = {len(trials) * sweep.gpu_hours_per_trial:,.0f}"] if sweep.gpu_hours_per_trial else []),
        f"MLflow: experiment {plan.experiment!r} at {plan.tracking_uri or '(off)'}; run directories under {plan.output_dir}",
        f"shared overrides: {' '.join(shared) or '(none)'}",
        "",
        "| # | run_name | config | overrides |",
        "|---|---|---|---|",
    ]
    lines += [f"| {i} | {t.name} | {t.config} | {' '.join(t.variant)} |" for i, t in enumerate(trials, 1)]
    return "\n".join(lines)
