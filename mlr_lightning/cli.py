"""Command line: ``python -m mlr_lightning {fit,grid,compare} ...``.

Knows about files, arguments and messages; nothing about tensors.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from mlr_lightning.config import ConfigError, load_config, to_yaml


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlr_lightning",
        description="Mask-based Latent Reconstruction (MLR) experiments on PyTorch Lightning and TorchRL.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = commands.add_parser("fit", help="train an agent from a config file", description="Train an agent.")
    fit.add_argument("--config", required=True, action="append",
                     help="YAML file, e.g. conf/quickstart.yaml or conf/dmc/walker_walk.yaml; repeat it to merge "
                          "several files in order (e.g. a task, then conf/atari/official.yaml)")
    fit.add_argument("--print-config", action="store_true",
                     help="print the merged, validated config (every key, defaults included) and exit")
    fit.add_argument("--resume", metavar="PATH|auto",
                     help="continue a run from its full-state checkpoint: a run directory, a snapshot "
                          "(checkpoints/update-N) or 'auto' (this config's latest run, or a fresh start if none)")
    fit.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                     help="with --resume: let this optimiser setting differ from the run's config (repeatable), "
                          "e.g. --allow-change sac.alpha_lr to continue a diverging run with a smaller rate")
    fit.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. mlr.enabled=false seed=3")

    sync = commands.add_parser("sync", help="fill a run's MLflow history in from its metrics.csv",
                               description="Log the rows of <run_dir>/metrics.csv that its MLflow run is missing "
                                           "(e.g. after the tracking server was down during training).")
    sync.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    sync.add_argument("--tracking-uri", help="default: the store recorded in <run_dir>/mlflow_run.json")

    grid = commands.add_parser("grid", help="run seeds x overrides into one MLflow experiment",
                               description="Run every combination of --seeds and --vary, one after the other, "
                                           "into one MLflow experiment; --print-only prints the commands instead.")
    grid.add_argument("--config", required=True)
    grid.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    grid.add_argument("--vary", action="append", default=[], metavar="key=v1,v2",
                      help="an override axis, repeatable, e.g. --vary mlr.enabled=true,false")
    grid.add_argument("--experiment", help="MLflow experiment name (tracking.experiment)")
    grid.add_argument("--print-only", action="store_true", help="print one fit command per run and exit")
    grid.add_argument("overrides", nargs="*", metavar="key=value", help="overrides shared by every run")

    cmp = commands.add_parser("compare", help="tables and plots from an MLflow experiment",
                              description="Counts one FINISHED run per task, algorithm and seed (lists the rest). "
                                          "Per-task mean ± sample std at step budgets beside the paper's numbers, "
                                          "aggregate IQM/median/mean/optimality gap with bootstrap CIs, plots.")
    cmp.add_argument("--experiment", default="mlr_lightning")
    cmp.add_argument("--filter", default="", help="MLflow filter, e.g. \"tags.task = 'walker_walk'\"")
    cmp.add_argument("--budgets", type=int, nargs="+", default=None,
                     help="environment steps, e.g. 100000 500000 (default: the runs' final evaluation steps)")
    cmp.add_argument("--common-seeds", action="store_true",
                     help="where an algorithm has unequal runs per task, aggregate only the seeds every task has")
    cmp.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///<output-dir>/mlflow.db")
    cmp.add_argument("--output-dir", default="runs", help="where fit wrote runs (locates the embedded store)")
    cmp.add_argument("--out", default=None, help="directory for tables and plots (default <output-dir>/compare-<experiment>)")
    cmp.add_argument("--reps", type=int, default=2000, help="bootstrap repetitions")

    table = commands.add_parser("atari-table", help="per-game Atari-100k table (reference, paper, your runs)",
                                description="Raw and human-normalised scores per game: random, human, the paper's "
                                            "Baseline and MLR, and the final evaluations of the runs under --runs.")
    table.add_argument("--runs", default=None, help="directory of run directories (e.g. runs); omit for the paper only")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"fit": run_fit, "grid": run_grid, "compare": run_compare, "sync": run_sync,
                "atari-table": run_atari_table}[args.command](args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2


def run_fit(args) -> int:
    cfg = load_config(args.config, args.overrides)
    if getattr(args, "print_config", False):
        print(to_yaml(cfg), end="")
        return 0
    from mlr_lightning.mlr.warmup import warmup_note
    if note := warmup_note(cfg):
        print(note, file=sys.stderr)
    from mlr_lightning.data.stream import EnvironmentFailure
    from mlr_lightning.envs.atari import UnknownGameError
    from mlr_lightning.envs.dmc import UnknownTaskError
    from mlr_lightning.envs.rendering import RenderBackendError
    from mlr_lightning.training.experiment import RunFailed, RunInterrupted, fit
    from mlr_lightning.training.run_dir import RunDirError
    from mlr_lightning.training.snapshot import CheckpointError
    from mlr_lightning.training.tracking import TrackingStoreError

    try:
        run_dir = fit(cfg, resume=getattr(args, "resume", None), allow_change=getattr(args, "allow_change", ()))
    except (UnknownTaskError, UnknownGameError, RenderBackendError, CheckpointError, RunDirError,
            TrackingStoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (RunFailed, EnvironmentFailure) as err:
        print(f"error: training stopped: {err}", file=sys.stderr)
        return 1
    except RunInterrupted as stop:
        saved = (f"the full state is saved in {stop.run_dir / 'checkpoints'}" if stop.snapshot_saved else
                 f"stopped at once, without a snapshot: the resume continues from the last snapshot in "
                 f"{stop.run_dir / 'checkpoints'}")
        print(f"{stop.signal_name}: stopped at env step {stop.env_steps}; {saved}.\nResume with: python -m "
              f"mlr_lightning fit --config {stop.run_dir / 'config.yaml'} --resume {stop.run_dir}", file=sys.stderr)
        return 128 + {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}[stop.signal_name]
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank == 0:  # under DDP every rank returns here
        print(f"Results: {run_dir} (config.yaml, metrics.csv, checkpoints/last.ckpt)")
    return 0


def run_sync(args) -> int:
    from mlr_lightning.training.tracking import TrackingStoreError, sync_run

    for run_dir in args.run_dirs:
        if not Path(run_dir, "metrics.csv").is_file():
            print(f"error: {run_dir} is not a run directory (no metrics.csv)", file=sys.stderr)
            return 2
        try:
            run_id, last = sync_run(Path(run_dir), args.tracking_uri)
        except TrackingStoreError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{run_dir}: MLflow run {run_id} holds metrics through env step {last}")
    return 0


def run_grid(args) -> int:
    from mlr_lightning.grid import expand_grid, fit_command

    try:
        runs = expand_grid(args.seeds, args.vary)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    shared = list(args.overrides) + ([f"tracking.experiment={args.experiment}"] if args.experiment else [])
    configs = [load_config(args.config, shared + run) for run in runs]  # validate every run before starting any
    commands = [fit_command(args.config, shared + run) for run in runs]
    if args.print_only:
        print("\n".join(commands))
        return 0
    print(f"{len(runs)} runs into MLflow experiment {configs[0].tracking.experiment!r}, one after the other. "
          "To hand them to your own launcher (a SLURM array, GNU parallel), print them with --print-only.")
    for i, (command, run) in enumerate(zip(commands, runs), 1):
        print(f"[{i}/{len(runs)}] {command}", flush=True)
        code = run_fit(argparse.Namespace(config=args.config, overrides=shared + run))
        if code:
            return code
    return 0


def run_compare(args) -> int:
    from mlflow import MlflowClient

    from mlr_lightning.reporting.compare import CompareError, compare
    from mlr_lightning.training.tracking import resolve_tracking_uri

    client = MlflowClient(resolve_tracking_uri(args.tracking_uri, args.output_dir))
    out = Path(args.out or Path(args.output_dir) / f"compare-{args.experiment}")
    try:
        compare(client, args.experiment, out, args.budgets, args.filter, reps=args.reps, common_seeds=args.common_seeds)
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print((out / "summary.md").read_text())
    print(f"Tables and plots: {out}")
    return 0


def run_atari_table(args) -> int:
    from mlr_lightning.reporting.atari_table import atari_table, collect_runs, format_table

    runs = collect_runs(Path(args.runs)) if args.runs else None
    print(format_table(atari_table(runs), with_runs=bool(args.runs)))
    return 0
