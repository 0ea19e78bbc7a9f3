"""Command line: ``python -m mlr_lightning {fit,grid,sweep,compare,sync,atari-table,probe} ...``.

Knows about files, arguments and messages; nothing about tensors.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback
from pathlib import Path

from mlr_lightning.config import ConfigError, to_yaml
from mlr_lightning.mlr.warmup import warmup_shortfall
from mlr_lightning.training.preflight import check_render_environment

FIT_EXAMPLES = """\
  python -m mlr_lightning fit --config conf/quickstart.yaml                 # SAC+MLR on CPU, minutes
  python -m mlr_lightning fit --config conf/dmc/walker_walk.yaml seed=2     # paper settings (GPU)
  python -m mlr_lightning fit --config conf/dmc/walker_walk.yaml mlr.enabled=false   # the paper's Baseline
  python -m mlr_lightning fit --config conf/atari/quickstart.yaml           # Rainbow+MLR on Pong, minutes
  python -m mlr_lightning fit --config conf/dmc/cheetah_run.yaml --print-config      # every value, nothing run
  python -m mlr_lightning fit --config runs/<run>/config.yaml --resume runs/<run>    # continue a run
  python -m mlr_lightning fit --config conf/dmc/walker_walk.yaml run_name=ww-s1 --resume auto   # requeue-safe
"""
GRID_EXAMPLES = """\
  python -m mlr_lightning grid --config conf/quickstart.yaml --seeds 1 2 3 --vary mlr.enabled=true,false \\
      --experiment ablation                                                 # 6 runs, one after the other
  python -m mlr_lightning grid --config conf/dmc/walker_walk.yaml --vary mlr.seq_len=8,16 --print-only
"""
COMPARE_EXAMPLES = """\
  python -m mlr_lightning compare --experiment ablation                     # runs/mlflow.db
  python -m mlr_lightning compare --experiment ablation --budgets 100000 500000 --output-dir runs
  python -m mlr_lightning compare --experiment atari100k --budgets 100000 --filter "tags.mlr = 'on'"
  python -m mlr_lightning compare --experiment ablation --tracking-uri http://mlflow.example.org:5000
"""
SWEEP_EXAMPLES = """\
  python -m mlr_lightning sweep --config conf/sweeps/dmc100k.yaml --dry-run      # 120 trials, nothing run
  python -m mlr_lightning sweep --config conf/sweeps/quickstart.yaml             # 2 x 2 tiny CPU trials
  python -m mlr_lightning sweep --config conf/sweeps/atari100k.yaml --address HEAD:6379 tracking.uri=http://HEAD:5000
  python -m mlr_lightning sweep --config conf/sweeps/dmc100k.yaml --print-only   # one fit per line (SLURM array)
"""
SYNC_EXAMPLES = """\
  python -m mlr_lightning sync runs/cartpole_swingup-mlr-s1-20261125-120000  # after the server was down
  python -m mlr_lightning sync runs/* --tracking-uri http://127.0.0.1:5000
"""
TABLE_EXAMPLES = """\
  python -m mlr_lightning atari-table                                       # the paper's numbers only
  python -m mlr_lightning atari-table --runs runs                           # beside your finished runs
"""
PROBE_EXAMPLES = """\
  python -m mlr_lightning probe --runs runs/cartpole_swingup-mlr-s1-<time> runs/cartpole_swingup-baseline-s1-<time>
  python -m mlr_lightning probe --runs runs/<run> --episodes 16 --out probe.csv
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlr_lightning",
        description="Mask-based Latent Reconstruction (MLR) experiments on PyTorch Lightning and TorchRL.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, examples: str, **kwargs) -> argparse.ArgumentParser:
        return commands.add_parser(name, epilog="examples:\n" + examples,
                                   formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    fit = command("fit", FIT_EXAMPLES, help="train an agent from a config file", description="Train an agent.")
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
    fit.add_argument("--verbose", action="store_true",
                     help="show the libraries' messages (Lightning, TorchRL, MLflow) that fit hides by default")
    fit.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. mlr.enabled=false seed=3")

    sync = command("sync", SYNC_EXAMPLES, help="fill a run's MLflow history in from its metrics.csv",
                   description="Log the rows of <run_dir>/metrics.csv that its MLflow run is missing "
                               "(e.g. after the tracking server was down during training).")
    sync.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    sync.add_argument("--tracking-uri", help="default: the store recorded in <run_dir>/mlflow_run.json; a store "
                      "that lacks the run (a new one, or a run trained without MLflow) gets it anew")

    grid = command("grid", GRID_EXAMPLES, help="run seeds x overrides into one MLflow experiment",
                   description="Run every combination of --seeds and --vary, one after the other, "
                               "into one MLflow experiment; --print-only prints the commands instead.")
    grid.add_argument("--config", required=True)
    grid.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    grid.add_argument("--vary", action="append", default=[], metavar="key=v1,v2",
                      help="an override axis, repeatable, e.g. --vary mlr.enabled=true,false")
    grid.add_argument("--experiment", help="MLflow experiment name (tracking.experiment)")
    grid.add_argument("--print-only", action="store_true", help="print one fit command per run and exit")
    grid.add_argument("--restart-changed", action="store_true",
                      help="runs whose existing run has another config start afresh with this one (as sweep's)")
    grid.add_argument("overrides", nargs="*", metavar="key=value", help="overrides shared by every run")

    sweep = command("sweep", SWEEP_EXAMPLES,
                    help="run a sweep file's trials in parallel on Ray (one machine or a cluster)",
                    description="Run every trial of a sweep file (configs x seeds x axes) as its own fit process on "
                                "Ray Tune, with retries; a re-run skips finished trials and resumes the others from "
                                "their snapshots. See docs/sweeps.md.")
    sweep.add_argument("--config", required=True, help="sweep file, e.g. conf/sweeps/dmc100k.yaml")
    sweep.add_argument("--address", metavar="auto|HOST:PORT",
                       help="join this Ray cluster; default: start Ray on this machine for the sweep's lifetime")
    sweep.add_argument("--dry-run", action="store_true", help="validate every trial, print the trial table and exit")
    sweep.add_argument("--print-only", action="store_true",
                       help="print one fit command per trial (e.g. for a SLURM array job) and exit")
    sweep.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS",
                       help="print the trial table at least this often (and on every status change)")
    sweep.add_argument("--restart-changed", action="store_true",
                       help="trials whose existing run has another config start afresh with this one (their files "
                            "move to <run_dir>/previous-attempts/, their MLflow runs are kept, tagged replaced); "
                            "without it such a sweep stops before anything runs")
    sweep.add_argument("--verbose", action="store_true", help="show MLflow's and Ray's start-up messages")
    sweep.add_argument("overrides", nargs="*", metavar="key=value",
                       help="sweep keys (seeds=[1,2], resources.gpus=0.5, experiment=NAME) or config overrides "
                            "for every trial (train.num_env_steps=500000)")

    cmp = command("compare", COMPARE_EXAMPLES, help="tables and plots from an MLflow experiment",
                  description="Counts one FINISHED run per task, algorithm and seed (lists the rest). "
                              "Per-task mean ± sample std at step budgets beside the paper's numbers, "
                              "aggregate IQM/median/mean/optimality gap with bootstrap CIs, the probability of "
                              "improvement between arms, IQM curves, score matrices (CSV, .npz), plots; the report "
                              "is logged to MLflow as an analysis run.")
    cmp.add_argument("--experiment", default="mlr_lightning")
    cmp.add_argument("--filter", default="", help="MLflow filter, e.g. \"tags.task = 'walker_walk'\" or "
                     "\"params.`mlr.mask_ratio` = '0.5'\" (string values in single quotes, dotted names in backticks)")
    cmp.add_argument("--by", action="append", metavar="KEY",
                     help="the config key whose values are the arms (repeatable; default mlr.enabled: MLR and "
                          "Baseline), e.g. --by mlr.mask_ratio")
    cmp.add_argument("--budgets", type=int, nargs="+", default=None,
                     help="environment steps, e.g. 100000 500000 (default: the runs' final evaluation steps)")
    cmp.add_argument("--common-seeds", action="store_true",
                     help="where an algorithm has unequal runs per task, aggregate only the seeds every task has")
    cmp.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///<output-dir>/mlflow.db")
    cmp.add_argument("--output-dir", default="runs", help="where fit wrote runs (locates the embedded store)")
    cmp.add_argument("--out", default=None, help="directory for tables and plots (default: compare-<experiment> "
                                                 "beside an embedded store, else in --output-dir)")
    cmp.add_argument("--reps", type=int, default=2000, help="bootstrap repetitions")

    table = command("atari-table", TABLE_EXAMPLES, help="per-game Atari-100k table (reference, paper, your runs)",
                    description="Raw and human-normalised scores per game: random, human, the paper's "
                                "Baseline and MLR, and the final evaluations of the runs under --runs.")
    table.add_argument("--runs", default=None, help="directory of run directories (e.g. runs); omit for the paper only")

    probe = command("probe", PROBE_EXAMPLES, help="how much physical state each run's encoder makes linearly readable (DMC)",
                    description="Frames and simulator states (joint positions, hinge angles as cos/sin, velocities) "
                                "from episodes of uniformly random actions; a ridge regression from each encoder's "
                                "latents (and untrained ones') to the standardised states; held-out R² per state "
                                "dimension and averaged, with a bootstrap CI. See docs/analysis.md.")
    probe.add_argument("--runs", nargs="+", required=True, metavar="RUN",
                       help="run directories (or checkpoints) of one DMC task, e.g. an MLR and a Baseline run")
    probe.add_argument("--seed", type=int, default=0, help="seed of the behaviour policy and the environment")
    probe.add_argument("--episodes", type=int, default=8, help="episodes collected; the last quarter is held out")
    probe.add_argument("--untrained", type=int, default=3, help="untrained encoders (initialisations) as references")
    probe.add_argument("--alpha", type=float, default=1.0, help="ridge penalty on standardised latents")
    probe.add_argument("--reps", type=int, default=1000, help="bootstrap repetitions")
    probe.add_argument("--out", default=None, help="also write the table to this CSV file")
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Arguments, with key=value overrides anywhere on the line (``fit --config X a=1 --resume auto b=2``):
    argparse takes positionals in one run only, so the ones after an option come back as extras."""
    args, extras = parser.parse_known_args(argv)
    if extras and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extras):
        args.overrides = [*args.overrides, *extras]
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)} (overrides are key=value)")
    return args


# The optional parts (pyproject's extras): a command that needs a missing one says which extra to install.
OPTIONAL_PACKAGES = {"mlflow": "mlflow", "sqlalchemy": "mlflow", "alembic": "mlflow", "rliable": "analysis",
                     "arch": "analysis", "pandas": "analysis", "ray": "sweep"}


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    try:
        check_render_environment()  # before anything imports dm_control
        return {"fit": run_fit, "grid": run_grid, "sweep": run_sweep, "compare": run_compare, "sync": run_sync,
                "atari-table": run_atari_table, "probe": run_probe}[args.command](args)
    except ConfigError as err:
        print("config error: " + " ".join(str(err).split("\n")), file=sys.stderr)  # one line, whoever raised it
        return 2
    except ModuleNotFoundError as err:
        extra = OPTIONAL_PACKAGES.get((err.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"error: {args.command} needs {err.name}, which is not installed here: "
              f"pip install 'mlr_lightning[{extra}]' (or 'mlr_lightning[all]')", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before training started (training handles its own Ctrl-C): nothing to keep
        print(f"interrupted during start-up: {args.command} trained nothing yet; run the same command again", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as err:  # a bug, or a failure of the machine: the whole traceback, then one line to act on
        traceback.print_exc()
        where = " ".join(getattr(err, "__notes__", []))  # fit's: where the traceback is kept
        print(f"error: {args.command} stopped on an unexpected {type(err).__name__} (traceback above). "
              + (where or "Please report it with that traceback."), file=sys.stderr)
        return 1


def usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run_fit(args) -> int:
    from mlr_lightning.training.console import fit_summary, quiet_libraries

    quiet_libraries(verbose=getattr(args, "verbose", False))
    from mlr_lightning.domains import domain_of, load_config

    cfg = load_config(args.config, args.overrides)
    if getattr(args, "print_config", False):
        print(to_yaml(cfg), end="")
        return 0
    from mlr_lightning.training.preflight import preflight

    # This machine can run it: before a run directory or an MLflow run exists.
    preflight(cfg, resuming=bool(getattr(args, "resume", None)))
    from mlr_lightning.data.stream import EnvironmentFailure
    from mlr_lightning.envs.atari import UnknownGameError
    from mlr_lightning.envs.dmc import UnknownTaskError
    from mlr_lightning.envs.rendering import RenderBackendError
    from mlr_lightning.training.experiment import RunFailed, RunInterrupted, fit
    from mlr_lightning.training.run_dir import RunDirError
    from mlr_lightning.training.snapshot import CheckpointError
    from mlr_lightning.training.tracking import TrackingStoreError

    started = time.monotonic()
    try:
        domain_of(cfg).check_task(cfg)  # an unknown task or camera is reported before anything else
        if note := warmup_note(cfg):
            print(note, file=sys.stderr)
        run_dir = fit(cfg, resume=getattr(args, "resume", None), allow_change=getattr(args, "allow_change", ()))
    except (UnknownTaskError, UnknownGameError, RenderBackendError, CheckpointError, RunDirError,
            TrackingStoreError) as err:
        return usage_error(str(err))
    except (RunFailed, EnvironmentFailure) as err:
        print(f"error: training stopped: {err}", file=sys.stderr)
        return 1
    except RunInterrupted as stop:
        saved = (f"the full state is saved in {stop.run_dir / 'checkpoints'}" if stop.snapshot_saved else
                 f"stopped at once, without a snapshot: the resume continues from the last snapshot in "
                 f"{stop.run_dir / 'checkpoints'}")
        print(f"{stop.signal_name}: stopped at env step {stop.env_steps}; {saved}.\nResume with: python -m "
              f"mlr_lightning fit --config {stop.run_dir / 'config.yaml'} --resume {stop.run_dir}", file=sys.stderr)
        return 128 + signal.Signals[stop.signal_name]
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank == 0:  # under DDP every rank returns here
        print(fit_summary(run_dir, time.monotonic() - started, resumed=bool(getattr(args, "resume", None))))
    return 0


def mlr_updates(cfg) -> int:
    """MLR updates in a run: one per agent update, after the random ``train.init_steps`` agent steps."""
    from mlr_lightning.domains import domain_of

    agent_steps = cfg.train.num_env_steps // domain_of(cfg).env_steps_per_agent_step(cfg)
    return max(0, agent_steps - cfg.train.init_steps) * cfg.train.updates_per_step


def warmup_note(cfg) -> str | None:
    """A one-line note when MLR's LR warm-up (``mlr.warmup_steps``, where the domain has one) outlasts
    the run; None otherwise (Baseline runs, domains without a warm-up, runs longer than it)."""
    mlr = cfg.mlr
    if not mlr.enabled or "warmup_steps" not in mlr:
        return None
    short = warmup_shortfall(mlr_updates(cfg), mlr.warmup_steps, mlr.warmup_init_factor)
    if short is None:
        return None
    return (f"note: this run makes {short.updates} MLR updates, fewer than the MLR learning-rate warm-up "
            f"(mlr.warmup_steps={short.warmup_steps}): MLR trains at ~{_percent(short.mean_factor)} of mlr.lr on average "
            f"({_percent(short.end_factor)} at the end). To change it set mlr.warmup_steps, e.g. "
            f"mlr.warmup_steps={short.shorter_warmup} (~{_percent(short.shorter_mean_factor)} on average).")


def _percent(fraction: float) -> str:
    return f"{fraction:.0%}" if fraction >= 0.01 else f"{100 * fraction:.2g}%"


def run_sync(args) -> int:
    from mlr_lightning.training.preflight import check_tracking_uri
    from mlr_lightning.training.run_dir import in_use
    from mlr_lightning.training.tracking import TrackingStoreError, sync_run

    if args.tracking_uri:  # a bounded connection attempt, one line if it fails; the store may be new (sync_run)
        check_tracking_uri(args.tracking_uri, f"--tracking-uri {args.tracking_uri}")
    for run_dir in args.run_dirs:
        if not Path(run_dir, "metrics.csv").is_file():
            return usage_error(f"{run_dir} is not a run directory (no metrics.csv)")
        try:
            run_id, last, status = sync_run(Path(run_dir), args.tracking_uri, in_use=in_use(Path(run_dir)))
        except TrackingStoreError as err:
            return usage_error(str(err))
        print(f"{run_dir}: MLflow run {run_id} holds metrics through env step {last}"
              + (f"; status {status}" if status else ""))
    return 0


def run_grid(args) -> int:
    """The sweep's trials (one code path for expanding them), run one after the other in this process."""
    from mlr_lightning.domains import load_config
    from mlr_lightning.sweep.mlflow_store import open_store
    from mlr_lightning.sweep.runner import settle_existing_runs
    from mlr_lightning.sweep.spec import expand, grid_sweep
    from mlr_lightning.training.preflight import preflight

    plan = expand(grid_sweep(args.config, args.seeds, args.vary, args.experiment, args.overrides))
    if args.print_only:
        print("\n".join(trial.command() for trial in plan.trials))
        return 0
    for trial in plan.trials[:1]:  # the trials share output_dir, tracking and accelerator
        preflight(load_config(trial.config, list(trial.overrides)))
    finished, todo = settle_existing_runs(plan, open_store(plan), restart_changed=args.restart_changed)
    print(f"{len(plan.trials)} runs into MLflow experiment {plan.experiment!r}, one after the other"
          + (f" ({len(finished)} finished earlier)" if finished else "") + ". To run them in parallel, on this "
          "machine or a Ray cluster, use sweep; to hand them to your own launcher (a SLURM array, GNU parallel), "
          "print them with --print-only.")
    for i, trial in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {trial.command()}", flush=True)
        code = run_fit(argparse.Namespace(config=trial.config, overrides=list(trial.overrides), resume="auto"))
        if code:
            return code
    return 0


def run_sweep(args) -> int:
    from mlr_lightning.training.console import quiet_libraries

    quiet_libraries(verbose=args.verbose)  # before MLflow is imported: it reads its log level then
    from mlr_lightning.domains import load_config
    from mlr_lightning.sweep.runner import format_plan, run_on_ray
    from mlr_lightning.sweep.spec import expand, load_sweep
    from mlr_lightning.training.preflight import preflight

    sweep, trial_overrides = load_sweep(args.config, args.overrides)
    plan = expand(sweep, trial_overrides)
    if args.print_only:
        print("\n".join(trial.command() for trial in plan.trials))
        return 0
    if args.dry_run:
        print(format_plan(plan))
        return 0
    if args.address is None:  # on a cluster the driver's machine may lack the trials' GPUs
        preflight(load_config(plan.trials[0].config, list(plan.trials[0].overrides)))
    notes = [note for trial in plan.trials if (note := warmup_note(trial.cfg))]
    return run_on_ray(plan, address=args.address, progress_every_s=args.progress_every,
                      restart_changed=args.restart_changed, verbose=args.verbose, notes=notes)


def run_compare(args) -> int:
    from mlr_lightning.training.console import quiet_libraries
    from mlr_lightning.training.preflight import check_tracking_uri, check_writable_dir, tracking_store

    # Arguments first, before MLflow is touched: a mistake costs one line, and creates no store.
    if args.budgets and any(budget <= 0 for budget in args.budgets):
        return usage_error(f"--budgets are environment steps and must be > 0, got {' '.join(map(str, args.budgets))}")
    if args.reps < 1:
        return usage_error(f"--reps is a number of bootstrap repetitions and must be >= 1, got {args.reps}")
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        return usage_error(f"--output-dir {args.output_dir} is a file; give the output_dir that fit wrote runs to")
    uri, where = tracking_store(args.tracking_uri, args.output_dir, "--tracking-uri", "--output-dir")
    beside = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else Path(args.output_dir)
    out = Path(args.out or beside / f"compare-{args.experiment}")
    try:
        check_tracking_uri(uri, where, must_exist=True)  # compare reads a store: it must not create one
        check_writable_dir(out, f"--out={out}")
    except ConfigError as err:
        return usage_error(str(err))
    quiet_libraries()
    from mlflow import MlflowClient

    from mlr_lightning.reporting.compare import DEFAULT_BY, CompareError, compare

    client = MlflowClient(uri)
    try:
        result = compare(client, args.experiment, out, args.budgets, args.filter, reps=args.reps,
                         common_seeds=args.common_seeds, by=tuple(args.by or DEFAULT_BY))
    except CompareError as err:
        return usage_error(str(err))
    print((out / "summary.md").read_text())
    print(f"Tables and plots: {out} (also the artifacts of MLflow analysis run {result['analysis_run']})")
    return 0


def run_atari_table(args) -> int:
    from mlr_lightning.reporting.atari_table import atari_table, collect_runs, format_table

    if args.runs and not Path(args.runs).is_dir():
        return usage_error(f"--runs {args.runs} is not a directory; give the output_dir that fit wrote runs to")
    runs = collect_runs(Path(args.runs)) if args.runs else None
    if args.runs and not runs:
        return usage_error(f"no finished Atari runs under {args.runs} (run directories with domain: atari in "
                           "config.yaml and a final evaluation in metrics.csv)")
    print(format_table(atari_table(runs), with_runs=bool(args.runs)))
    return 0


def run_probe(args) -> int:
    for name, value, low in (("--episodes", args.episodes, 2), ("--untrained", args.untrained, 1), ("--reps", args.reps, 1)):
        if value < low:
            return usage_error(f"{name} must be >= {low}, got {value}")
    if args.alpha < 0:
        return usage_error(f"--alpha is a ridge penalty and must be >= 0, got {args.alpha}")
    from mlr_lightning.training.console import quiet_libraries

    quiet_libraries()
    from mlr_lightning.reporting.probe import BEHAVIOUR, ProbeError, probe_runs

    try:
        table = probe_runs(args.runs, args.seed, args.episodes, args.untrained, args.alpha, args.reps)
    except ProbeError as err:
        return usage_error(str(err))
    if args.out:
        table.to_csv(args.out)
    print(f"Held-out R² of a ridge probe latents -> standardised physical state ({BEHAVIOUR}, seed {args.seed}, "
          f"{args.episodes} episodes, the last quarter held out; 95% bootstrap CI over held-out frames):")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    return 0
