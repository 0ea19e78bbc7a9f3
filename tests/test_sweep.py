"""Sweeps: sweep files expanded and validated before anything runs; then real fit processes on a real
Ray cluster (started here, or by .ci/run through MLR_TEST_RAY_ADDRESS) and on the default local Ray
instance, logging to real MLflow stores, through a SIGKILL, a trial that keeps failing and Ctrl-C."""

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import ray
from mlflow import MlflowClient

from mlr_lightning.cli import main
from mlr_lightning.reporting.analysis_run import ANALYSIS_TAG
from tests.conftest import with_repo_on_path

ROOT = Path(__file__).resolve().parents[1]


def cli_env() -> dict:
    """This environment for a child process, less an MLflow URI exported by in-process runs."""
    return with_repo_on_path({k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})

QUICKSTART = "conf/sweeps/quickstart.yaml"
BIN = Path(sys.executable).parent


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)  # sweep files name their configs relative to the current directory


def sweep_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return str(path)


# ----------------------------------------------------------------------- expansion and validation


@pytest.mark.parametrize("path, trials", [("conf/sweeps/dmc100k.yaml", 120), ("conf/sweeps/atari100k.yaml", 156)])
def test_the_paper_sweeps_dry_run_to_their_trial_counts_without_ray(path, trials, tmp_path, in_repo, capsys):
    assert main(["sweep", "--config", path, "--dry-run", f"output_dir={tmp_path / 'runs'}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{trials} trials = ")
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    assert len(rows) == trials
    assert len({row.split(" | ")[1] for row in rows}) == trials, "run names must be unique"
    assert "cpus=2 gpus=0.5" in out
    assert not (tmp_path / "runs").exists() and not ray.is_initialized()


BAD_SWEEPS = {
    "unknown key": ("configs: [conf/quickstart.yaml]\nsedds: [1, 2]\n", "unknown key 'sedds'"),
    "empty axis": ("configs: [conf/quickstart.yaml]\naxes:\n  mlr.enabled: []\n", "axes.mlr.enabled is empty"),
    "missing base config": ("configs: [conf/dmc/walker_wallk.yaml]\n", "configs: conf/dmc/walker_wallk.yaml does not exist"),
    "glob matching nothing": ("configs: conf/dmc/*.yml\n", "configs: conf/dmc/*.yml matches no file"),
    "a trial's override fails validation": ("configs: [conf/dmc/walker_walk.yaml]\naxes:\n  mlr.seq_len: [16, 12]\n",
                                            "mlr.seq_len (12) must be divisible by mlr.block_size (8)"),
    "seed as an axis": ("configs: [conf/quickstart.yaml]\naxes:\n  seed: [1, 2]\n", "use seeds"),
    "more CPUs than any node": ("configs: [conf/quickstart.yaml]\nresources: {cpus: 10000}\n", "resources.cpus"),
    "more GPUs than any node": ("configs: [conf/quickstart.yaml]\nresources: {cpus: 1, gpus: 1000}\n",
                                       "resources.gpus"),
    "GPU trials without GPUs": ("configs: [conf/quickstart.yaml]\noverrides: {trainer.accelerator: gpu}\n",
                                "resources.gpus is 0"),
    "unknown resource": ("configs: [conf/quickstart.yaml]\nresources: {cpu: 1}\n", "resources.cpu"),
}


@pytest.mark.parametrize("case", list(BAD_SWEEPS))
def test_a_bad_sweep_stops_with_one_line_naming_the_key_before_anything_exists(case, tmp_path, in_repo, capsys):
    text, key = BAD_SWEEPS[case]
    out = tmp_path / "runs"
    assert main(["sweep", "--config", sweep_file(tmp_path, text), f"output_dir={out}"]) == 2  # a real run, not --dry-run
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err, err
    assert not out.exists(), "nothing may be written for a bad sweep"
    assert not ray.is_initialized()


def test_on_a_cluster_a_local_sqlite_store_is_refused_before_connecting(tmp_path, in_repo, capsys):
    code = main(["sweep", "--config", QUICKSTART, "--address", "127.0.0.1:1", f"output_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "tracking.uri is sqlite:///" in err and "MLflow server" in err
    assert not (tmp_path / "runs").exists() and not ray.is_initialized()


def test_grid_and_sweep_expand_trials_through_the_same_code(tmp_path, in_repo, capsys):
    path = sweep_file(tmp_path, "experiment: ablation\nconfigs: [conf/dmc/walker_walk.yaml]\nseeds: [1, 2]\n"
                                "axes:\n  mlr.enabled: [true, false]\noverrides:\n  train.batch_size: 256\n")
    assert main(["sweep", "--config", path, "--print-only"]) == 0
    from_sweep = capsys.readouterr().out.splitlines()
    assert main(["grid", "--config", "conf/dmc/walker_walk.yaml", "--seeds", "1", "2", "--vary", "mlr.enabled=true,false",
                 "--experiment", "ablation", "--print-only", "train.batch_size=256"]) == 0
    assert capsys.readouterr().out.splitlines() == from_sweep
    assert [c.split("run_name=")[1].split()[0] for c in from_sweep] == [
        "ablation-walker_walk-mlr-s1", "ablation-walker_walk-mlr-s2",
        "ablation-walker_walk-baseline-s1", "ablation-walker_walk-baseline-s2"]
    assert all(" --resume auto " in c and c.endswith(("seed=1", "seed=2")) for c in from_sweep)


def test_command_line_items_change_the_sweep_or_every_trial(tmp_path, in_repo, capsys):
    assert main(["sweep", "--config", "conf/sweeps/dmc100k.yaml", "--dry-run", "seeds=[3]", "resources.gpus=1",
                 "train.num_env_steps=200000", "axes.mlr.mask_ratio=[0.25,0.75]"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("24 trials = 6 configs x 1 seeds x 4 variants") and "cpus=2 gpus=1" in out
    assert "train.num_env_steps=200000" in out.splitlines()[3]  # shared by every trial
    assert "| dmc100k-walker_walk-baseline-mask_ratio_0.75-s3 | conf/dmc/walker_walk.yaml | " \
           "mlr.enabled=false mlr.mask_ratio=0.75 seed=3 |" in out


def test_two_configs_of_one_task_get_their_file_name_in_the_run_name(tmp_path, in_repo, capsys):
    variant = tmp_path / "walker_fast_tau.yaml"
    variant.write_text((ROOT / "conf/dmc/walker_walk.yaml").read_text() + "sac:\n  critic_tau: 0.05\n")
    path = sweep_file(tmp_path, f"experiment: e\nconfigs: [conf/dmc/walker_walk.yaml, {variant}]\nseeds: [1]\n")
    assert main(["sweep", "--config", path, "--print-only"]) == 0
    names = [c.split("run_name=")[1].split()[0] for c in capsys.readouterr().out.splitlines()]
    assert names == ["e-walker_walk-walker_walk-mlr-s1", "e-walker_fast_tau-walker_walk-mlr-s1"]


def test_the_final_table_is_printed_once(tmp_path, in_repo):
    from mlr_lightning.sweep.progress import ProgressTable
    from mlr_lightning.sweep.spec import expand, load_sweep

    plan = expand(*load_sweep(QUICKSTART, [f"output_dir={tmp_path}", "seeds=[1]"]))
    printed = []
    table = ProgressTable(plan.trials, every_s=3600, printer=lambda text, flush: printed.append(text))
    table.set(plan.trials[0].name, "finished")
    table.maybe_print()  # the last status change, printed as it happens
    table.maybe_print(force=True)  # the end of the sweep: nothing new, so not again
    assert len(printed) == 1
    table.set(plan.trials[1].name, "failed", note="refused its input: error: x")
    table.maybe_print(force=True)
    assert len(printed) == 2 and "| failed | - / 640 | - | 0 | refused its input: error: x |" in printed[1]


def test_the_end_summary_shows_each_arms_cost_from_its_runs_cost_files(tmp_path, in_repo):
    from mlr_lightning.sweep.progress import ProgressTable
    from mlr_lightning.sweep.runner import end_summary
    from mlr_lightning.sweep.spec import expand, load_sweep
    from mlr_lightning.training.cost import CostCounters, write_cost

    plan = expand(*load_sweep(QUICKSTART, [f"output_dir={tmp_path}", "seeds=[1,2]"]))
    walls = {"mlr-s1": [3000.0, 600.0], "mlr-s2": [1800.0], "baseline-s1": [1200.0]}  # baseline-s2: no cost.json
    for trial in plan.trials:
        attempts = next((w for suffix, w in walls.items() if trial.name.endswith(suffix)), None)
        if attempts is not None:
            trial.run_dir.mkdir(parents=True)
            write_cost(trial.run_dir, CostCounters(attempt_wall_s=attempts, device_hours=sum(attempts) / 3600,
                                                   num_devices=1, peak_gpu_mem_bytes=2**30, updates=1800,
                                                   env_steps=14400))
    text = end_summary(plan, ProgressTable(plan.trials, every_s=3600), 5400.0)
    (mlr,) = [line for line in text.splitlines() if "-mlr:" in line]
    (baseline,) = [line for line in text.splitlines() if "-baseline:" in line]
    # mlr: 2 runs, (3600 + 1800) / 2 s of training each, 1.5 GPU-hours, mean of 1800/3600 and 1800/1800 updates/s
    assert "2 run(s), 45m00s of training per run, 1.500 GPU-hours in all, 0.75 updates/s, 6.0 env steps/s" in mlr
    assert "1 run(s), 20m00s of training per run, 0.333 GPU-hours in all, 1.50 updates/s" in baseline


# ------------------------------------------------------------------------------- real runs: helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fit_pids(run_name: str) -> list[int]:
    """The fit processes of one trial (found by their command line)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"fit" in argv and f"run_name={run_name}".encode() in argv:
                pids.append(int(entry))
    return pids


def wait_for(condition, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the sweep ended before {what}: {proc.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def trial_log(run_dir: Path, experiment: str) -> Path:
    """Where the sweep keeps the output of a trial's fit processes (``sweep-<experiment>``, not sweep-sweep-...)."""
    folder = experiment if experiment.startswith("sweep") else f"sweep-{experiment}"
    return run_dir.parent / folder / "logs" / f"{run_dir.name}.log"


def has_snapshot(run_dir: Path) -> bool:
    return any(run_dir.glob("checkpoints/update-*/MANIFEST.json"))


def assert_steps_continuous(run_dir: Path, final: int, eval_every: int = 320, log_every: int = 40) -> None:
    """No step logged twice or skipped: evaluations at every ``eval_every`` and training rows every
    ``log_every`` environment steps (5 updates x action repeat 8), from the first to the last."""
    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    evals = [int(float(r["step"])) for r in rows if r.get("eval/return_mean")]
    train = [int(float(r["step"])) for r in rows  # less the cost row logged once at the end
             if not r.get("eval/return_mean") and not any(v for k, v in r.items() if k.startswith("cost/"))]
    assert evals == list(range(0, final + 1, eval_every))
    assert train == list(range(train[0], train[-1] + 1, log_every)) and final - log_every < train[-1] <= final


def training_runs(client: MlflowClient, experiment: str) -> list:
    """The experiment's fit runs, less the analysis runs ``compare`` logs its report in."""
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id]) if ANALYSIS_TAG not in r.data.tags]


def active_runs(client: MlflowClient, experiment: str) -> dict[str, list]:
    runs = {}
    for run in training_runs(client, experiment):
        runs.setdefault(run.info.run_name, []).append(run)
    return runs


def sweep_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlr_lightning", "sweep", "--config", QUICKSTART, "--progress-every", "600", *args]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# --------------------------------------------------------------------- real runs: local Ray instance


@pytest.mark.parametrize("path, by", [("conf/sweeps/ablations/mask_ratio.yaml", ("mlr.mask_ratio",)),
                                      ("conf/sweeps/dmc100k.yaml", ("mlr.enabled",))])
def test_the_end_of_sweep_comparison_takes_the_sweeps_axes_as_its_arms(path, by, in_repo):
    from mlr_lightning.sweep.runner import compare_by
    from mlr_lightning.sweep.spec import expand, load_sweep

    assert compare_by(expand(*load_sweep(path, []))) == by


@pytest.mark.slow
def test_grid_refuses_a_changed_config_and_restart_changed_starts_it_afresh(tmp_path, in_repo, capsys):
    """grid goes through the sweep's changed-config check: a rerun with another mlr.mask_ratio stops in
    one line (exit 2) and runs nothing; with --restart-changed the old files move to previous-attempts/."""
    from tests.conftest import TINY_OVERRIDES

    grid = ["grid", "--config", "conf/quickstart.yaml", "--seeds", "1", "--experiment", "g", *TINY_OVERRIDES,
            f"output_dir={tmp_path}", "tracking.video=false"]
    assert main(grid) == 0
    run_dir = tmp_path / "g-cartpole_swingup-mlr-s1"
    metrics = (run_dir / "metrics.csv").read_text()
    capsys.readouterr()
    assert main(grid + ["mlr.mask_ratio=0.25"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mlr.mask_ratio" in err and "--restart-changed" in err
    assert (run_dir / "metrics.csv").read_text() == metrics and not (run_dir / "previous-attempts").exists()
    assert main(grid[:1] + ["--restart-changed"] + grid[1:] + ["mlr.mask_ratio=0.25"]) == 0
    assert (run_dir / "previous-attempts").is_dir()
    assert "mask_ratio: 0.25" in (run_dir / "config.yaml").read_text()


@pytest.mark.slow
def test_a_run_left_running_by_a_killed_process_is_closed_when_its_grid_starts_again(tmp_path, in_repo, capsys):
    """A SIGKILL leaves the trial's MLflow run RUNNING with no process behind it; the next grid (or
    sweep) over that store says so and closes it (KILLED, metrics filled in), then resumes the trial."""
    from tests.conftest import TINY_OVERRIDES

    grid = ["grid", "--config", "conf/quickstart.yaml", "--seeds", "1", "--experiment", "g", *TINY_OVERRIDES,
            "train.num_env_steps=1600", f"output_dir={tmp_path}", "tracking.video=false"]
    run_dir = tmp_path / "g-cartpole_swingup-mlr-s1"
    killed = subprocess.Popen([sys.executable, "-m", "mlr_lightning", *grid], cwd=ROOT, env=cli_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(lambda: has_snapshot(run_dir), killed, 300, "the trial had a snapshot")
    finally:
        stop(killed)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (orphan,) = client.search_runs([client.get_experiment_by_name("g").experiment_id])
    assert orphan.info.status == "RUNNING"
    assert main(grid) == 0
    out = capsys.readouterr().out
    assert "closed 1 MLflow run(s) left RUNNING by a process that is gone: g-cartpole_swingup-mlr-s1 (KILLED)" in out
    assert out.index("closed 1 MLflow run") < out.index("[1/1]"), "closed after the trial started again"
    (run,) = client.search_runs([client.get_experiment_by_name("g").experiment_id])
    assert run.info.run_id == orphan.info.run_id and run.info.status == "FINISHED"


@pytest.mark.slow
def test_quickstart_sweep_on_the_local_instance_stops_on_ctrl_c_and_the_same_command_finishes_it(tmp_path):
    """The shipped quickstart sweep with one seed (MLR and Baseline, side by side), 3,200 environment
    steps long so that both still run when Ctrl-C comes (its 640 take seconds): Ctrl-C (SIGINT to
    the terminal's process group) once both have a snapshot; each saves and exits; the same command
    finishes the sweep with one FINISHED MLflow run per trial and the comparison tables; a third run
    has nothing to do."""
    steps = 3200
    out = tmp_path / "runs"
    command = sweep_command(f"output_dir={out}", "seeds=[1]", f"train.num_env_steps={steps}")
    env = cli_env()
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        wait_for(lambda: sum(has_snapshot(d) for d in out.glob("sweep-quickstart-*")) >= 2, driver, 300,
                 "two trials had a snapshot")
        running = [d for d in out.glob("sweep-quickstart-*") if fit_pids(d.name)]
        os.killpg(driver.pid, signal.SIGINT)
        output = driver.communicate(timeout=300)[0]
    finally:
        stop(driver)
    assert driver.returncode == 130, output[-3000:]
    assert "Run the same command again" in output
    assert len(running) == 2, "both trials should have been running at Ctrl-C"
    for run_dir in running:
        assert not fit_pids(run_dir.name), f"{run_dir.name} still runs after the sweep stopped"
        assert "SIGTERM: stopped at env step" in trial_log(run_dir, "sweep-quickstart").read_text(), \
            f"{run_dir.name} saved no snapshot"

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = active_runs(client, "sweep-quickstart")
    names = {f"sweep-quickstart-cartpole_swingup-{v}-s1" for v in ("mlr", "baseline")}
    assert set(runs) == names
    assert all(len(r) == 1 and r[0].info.status == "FINISHED" for r in runs.values()), runs
    for run_dir in running:
        assert "Resumed from" in trial_log(run_dir, "sweep-quickstart").read_text()
        assert_steps_continuous(run_dir, final=steps)
    tables = out / "compare-sweep-quickstart"
    assert (tables / "per_task.md").is_file() and (tables / f"aggregate_{steps}.md").is_file()
    assert f"| cartpole_swingup | MLR | {steps} | 1 |" in again.stdout

    third = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and "2 finished earlier, 0 to run" in third.stdout, third.stdout[-2000:]


def run_state(out: Path, experiment: str) -> dict:
    """Every MLflow run of the experiment (id, status, tags, params) and every run directory's files."""
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = {r.info.run_id: (r.info.status, r.info.end_time, r.data.tags, r.data.params)
            for r in training_runs(client, experiment)}
    files = {str(p.relative_to(out)): p.read_bytes() for d in out.glob(f"{experiment}-*") for p in d.rglob("*")
             if p.is_file() and p.name != ".lock"}
    return {"runs": runs, "files": files}


@pytest.mark.slow
def test_a_sweep_rerun_refuses_a_changed_config_and_an_input_error_is_not_retried(tmp_path, monkeypatch, capsys):
    """A real tiny sweep of two trials. The Baseline trial's run directory is held by another process,
    so its fit exits 2 (refused input): it is attempted once, not max_failures more times, and the
    sweep says why. Then, on the finished MLR trial: a rerun with a changed mlr.mask_ratio stops in one
    line (exit 2) naming the key, before Ray starts, and changes no run or file; a rerun with only a
    changed trainer.log_every_updates (bookkeeping) skips it as finished."""
    import fcntl

    out = tmp_path / "runs"
    mlr_dir, baseline_dir = (out / f"sweep-quickstart-cartpole_swingup-{v}-s1" for v in ("mlr", "baseline"))
    baseline_dir.mkdir(parents=True)
    held = open(baseline_dir / ".lock", "a+")
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    held.write(str(os.getpid()))
    held.flush()
    env = cli_env()
    env.pop("RAY_ADDRESS", None)
    try:
        first = subprocess.run(sweep_command(f"output_dir={out}", "seeds=[1]"), cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=900)
    finally:
        held.close()
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert log_attempts(baseline_dir, "sweep-quickstart") == 1, "an input error is not retried"
    assert f"failed: {baseline_dir.name}: refused its input: error: {baseline_dir} is in use by process" in first.stderr
    assert "1 refused their input (fit exit 2, not retried)" in first.stderr
    assert first.stdout.count("| sweep-quickstart-cartpole_swingup-mlr-s1 | finished |") == 1, "one final table"
    assert "Sweep done in " in first.stdout and "mlflow ui --backend-store-uri sqlite:///" in first.stdout
    assert "  sweep-quickstart-cartpole_swingup-mlr: 1 run(s), " in first.stdout, "the finished trial's cost"
    tag, = [r.data.tags["config_hash"] for r in training_runs(MlflowClient(f"sqlite:///{out / 'mlflow.db'}"),
                                                               "sweep-quickstart")]
    assert (mlr_dir / "config_hash").read_text().strip() == tag

    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.rmtree(baseline_dir)
    before = run_state(out, "sweep-quickstart")
    mlr_only = ["sweep", "--config", QUICKSTART, f"output_dir={out}", "seeds=[1]", "axes.mlr.enabled=[true]"]
    assert main([*mlr_only, "mlr.mask_ratio=0.25", "sac.critic_lr=0.01"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"trial {mlr_dir.name} already has a run of another config" in err
    assert "mlr.mask_ratio: 0.5 -> 0.25" in err and "sac.critic_lr: 0.001 -> 0.01" in err
    assert "experiment=NEW_NAME" in err and "--restart-changed" in err and "Sweep " not in captured.out
    assert not ray.is_initialized()
    assert run_state(out, "sweep-quickstart") == before, "a refused rerun changes no run and no file"

    assert main([*mlr_only, "trainer.log_every_updates=10"]) == 0
    assert "1 finished earlier, 0 to run" in capsys.readouterr().out
    assert not ray.is_initialized()
    after = run_state(out, "sweep-quickstart")
    assert after["runs"].keys() == before["runs"].keys() and after["files"] == before["files"]

    # --restart-changed: the trial starts afresh; its files and MLflow run are kept, the run tagged replaced.
    from mlr_lightning.reporting.compare import CompareError, compare
    from mlr_lightning.sweep.mlflow_store import open_store
    from mlr_lightning.sweep.runner import settle_existing_runs
    from mlr_lightning.sweep.spec import expand, load_sweep

    plan = expand(*load_sweep(QUICKSTART, [f"output_dir={out}", "seeds=[1]", "axes.mlr.enabled=[true]",
                                           "mlr.mask_ratio=0.25"]))
    client = open_store(plan)
    finished, todo = settle_existing_runs(plan, client, restart_changed=True)
    assert not finished and [t.name for t in todo] == [mlr_dir.name]
    kept = mlr_dir / "previous-attempts" / "1"
    assert (kept / "metrics.csv").read_bytes() == before["files"][f"{mlr_dir.name}/metrics.csv"]
    assert not (mlr_dir / "config.yaml").exists()
    old_run, = training_runs(client, "sweep-quickstart")
    assert old_run.info.status == "FINISHED" and old_run.data.tags["replaced"].startswith("by a fresh start")
    with pytest.raises(CompareError, match="replaced by a fresh start"):  # its only run: nothing left to count
        compare(client, "sweep-quickstart", tmp_path / "compare", reps=10)


# ------------------------------------------------------------------------------ real runs: a cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A Ray head (from .ci/run, or started here with 2 CPUs) and an MLflow server every node reaches."""
    store = tmp_path_factory.mktemp("mlflow-server")
    mlflow_port = free_port()
    server_env = dict(cli_env(), MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no job-worker processes
    server = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                               "--artifacts-destination", str(store / "artifacts"), "--host", "127.0.0.1",
                               "--port", str(mlflow_port), "--workers", "1"], env=server_env, start_new_session=True,
                              stdout=open(store / "server.log", "w"), stderr=subprocess.STDOUT)
    address, head, temp_dir = os.environ.get("MLR_TEST_RAY_ADDRESS"), None, None
    if not address:
        port, temp_dir = free_port(), tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths
        head_log = Path(temp_dir) / "head.log"
        head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                                 "--num-cpus", "2", "--port", str(port),
                                 "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp_dir],
                                env=cli_env(), start_new_session=True, stdout=open(head_log, "w"), stderr=subprocess.STDOUT)
        address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while head is not None and "Ray runtime started" not in head_log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, head_log.read_text()[-2000:]
            time.sleep(0.5)
        url = f"http://127.0.0.1:{mlflow_port}"
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (store / "server.log").read_text()[-2000:]
                time.sleep(0.5)
        yield {"address": address, "tracking_uri": url}
    finally:
        if head is not None:
            head.terminate()  # ray start --block takes its Ray processes down with it
            head.wait(timeout=120)
            shutil.rmtree(temp_dir, ignore_errors=True)
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def cluster_env() -> dict:
    """Ray sends its token (``ray start`` uses one when ~/.ray/auth_token exists) to an explicitly
    named cluster only when told to."""
    has_token = (Path.home() / ".ray" / "auth_token").is_file() or "RAY_AUTH_TOKEN" in os.environ
    return {**({"RAY_AUTH_MODE": "token"} if has_token else {}), **cli_env()}


@pytest.mark.slow
def test_on_a_cluster_resources_no_node_has_stop_before_any_trial(cluster, tmp_path):
    out = tmp_path / "runs"
    result = subprocess.run(sweep_command("--address", cluster["address"], f"tracking.uri={cluster['tracking_uri']}",
                                          "experiment=too-big", f"output_dir={out}", "resources.cpus=10000"),
                            cwd=ROOT, env=cluster_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("config error")]
    assert len(error) == 1 and "resources.cpus" in error[0] and "the Ray cluster at" in error[0]
    assert not list(out.glob("too-big-*")), "no trial may start"


@pytest.mark.slow
def test_on_a_cluster_a_sigkilled_trial_resumes_from_its_snapshot_and_a_failing_trial_ends_failed(cluster, tmp_path):
    """Two trials on the cluster: one whose fit process is SIGKILLed after its first snapshot (retried,
    resumed, one MLflow run, continuous metrics), one that fails on every attempt (a weight bound no
    network meets: FAILED in MLflow with the error after max_failures=1 retry) while the other finishes."""
    out = tmp_path / "runs"
    command = sweep_command("--address", cluster["address"], f"tracking.uri={cluster['tracking_uri']}", "experiment=faults",
                            f"output_dir={out}", "seeds=[1]", "axes.mlr.enabled=[true]", "axes.trainer.max_abs_weight=[10000,0.001]",
                            "max_failures=1", "train.num_env_steps=960")
    killed, failing = (out / f"faults-cartpole_swingup-mlr-max_abs_weight_{bound}-s1" for bound in ("10000", "0.001"))
    driver = subprocess.Popen(command, cwd=ROOT, env=cluster_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    try:
        wait_for(lambda: has_snapshot(killed), driver, 300, "the first snapshot")
        pids = fit_pids(killed.name)
        assert pids, "the trial's fit process was not found"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        output = driver.communicate(timeout=600)[0]
    finally:
        stop(driver)
    assert driver.returncode == 1, output[-3000:]  # one trial failed for good

    log = trial_log(killed, "faults").read_text()
    last_attempt = log.split("\n[sweep] ")[-1]
    assert log_attempts(killed) == 2 and "Resumed from" in last_attempt
    assert_steps_continuous(killed, final=960)
    assert log_attempts(failing) == 2  # the first try and max_failures=1 retry

    runs = active_runs(MlflowClient(cluster["tracking_uri"]), "faults")
    assert set(runs) == {killed.name, failing.name}
    assert len(runs[killed.name]) == 1 and runs[killed.name][0].info.status == "FINISHED"
    # Each attempt stopped before a snapshot, so the retry restarted from scratch: a new MLflow run, the
    # first attempt's kept in previous-attempts/ and its run FAILED with the reason.
    assert len(runs[failing.name]) == 2 and all(r.info.status == "FAILED" for r in runs[failing.name])
    assert (failing / "previous-attempts" / "1" / "metrics.csv").is_file()
    assert "the run diverged" in runs[failing.name][0].data.tags["error"]


def log_attempts(run_dir: Path, experiment: str = "faults") -> int:
    lines = trial_log(run_dir, experiment).read_text().splitlines()
    return sum(line.startswith("[sweep] ") and " attempt on " in line for line in lines)
