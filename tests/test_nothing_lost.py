"""Nothing a user ran is lost, whatever the user or the machine does: the faults of a hostile run,
each reproduced on a real tiny run (real rendering, real Lightning, a real MLflow store)."""

import contextlib
import csv
import json
import multiprocessing
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from mlr_lightning.agents.sac_mlr import SACMLRAgent
from mlr_lightning.cli import main
from mlr_lightning.domains import load_config
from mlr_lightning.training import callbacks, evaluation
from mlr_lightning.training.experiment import RunFailed, RunInterrupted, fit
from mlr_lightning.training.snapshot import snapshot_name, snapshots
from mlr_lightning.training.tracking import ensure_embedded_store, read_metrics

pytestmark = pytest.mark.slow  # real runs end to end

UPDATES = 320 // 8 - 20  # the tiny config: 40 agent steps, 20 of them random; a snapshot every 10 updates


def tiny(tiny_overrides, *extra):
    return load_config(None, tiny_overrides + ["tracking.video=false", "run_name=run", *extra])


def rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "cost/")) and v} for r in csv.DictReader(handle)]


def mlflow_runs(output_dir: Path):
    client = MlflowClient(f"sqlite:///{output_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mlr_lightning")
    return client, client.search_runs([experiment.experiment_id])


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_base_overrides):
    """A finished tiny run with MLflow (snapshots at updates 10 and 20, both kept)."""
    out = tmp_path_factory.mktemp("finished")
    fit(load_config(None, tiny_base_overrides + [f"output_dir={out}", "tracking.video=false", "run_name=run",
                                                 "trainer.keep_checkpoints=5"]))
    return out


def copy_without_newest_snapshot(finished: Path, target: Path) -> Path:
    """The finished run as if it had been killed right after its first snapshot (update 10)."""
    shutil.copytree(finished, target)
    checkpoints = target / "run" / "checkpoints"
    shutil.rmtree(checkpoints / snapshot_name(20))
    (checkpoints / "last.ckpt").unlink()
    (checkpoints / "last.ckpt").symlink_to(Path(snapshot_name(10)) / "model.ckpt")
    return target / "run"


# ----------------------------------------------------------------------------------- 1, 11
def test_a_resume_that_dies_at_start_up_keeps_the_history(finished, tmp_path, run_cli, start_cli):
    run_dir = copy_without_newest_snapshot(finished, tmp_path / "out")
    before = rows(run_dir)
    snapshot_step = 10 * 8 + 20 * 8  # 20 random agent steps + 10 updates, x action repeat 8
    kept = [r for r in before if int(r["step"]) <= snapshot_step]
    assert len(kept) < len(before)
    # SIGKILL at start-up, as soon as the process lives: whenever it lands, the history is intact.
    for delay in (3.0, 6.0, 9.0):
        proc = start_cli("fit", "--config", str(run_dir / "config.yaml"), f"output_dir={run_dir.parent}", "--resume", "auto")
        time.sleep(delay)
        proc.kill()
        proc.communicate()
        now = rows(run_dir)
        assert now[: len(kept)] == kept, f"history lost by a kill {delay} s into a resume"
    # A start-up failure after the logs were opened (an unreadable mlflow_run.json) loses nothing either.
    (run_dir / "mlflow_run.json").write_text("{not json")
    result = run_cli("fit", "--config", str(run_dir / "config.yaml"), f"output_dir={run_dir.parent}", "--resume", "auto",
                     timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mlflow_run.json is unreadable" in result.stderr
    assert rows(run_dir) == rows(finished / "run")


def test_a_metrics_file_cut_by_a_power_loss_is_repaired_on_resume(finished, tmp_path, run_cli):
    run_dir = copy_without_newest_snapshot(finished, tmp_path / "out")
    text = (run_dir / "metrics.csv").read_text()
    (run_dir / "metrics.csv").write_text(text[: text.rfind("\n", 0, len(text) - 1) + 12])  # last line cut mid-row
    assert len(read_metrics(run_dir / "metrics.csv")) == len(text.splitlines()) - 2  # header and the cut row
    result = run_cli("fit", "--config", str(run_dir / "config.yaml"), f"output_dir={run_dir.parent}", "--resume", "auto",
                     timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert rows(run_dir) == rows(finished / "run"), "the resumed history differs from the uninterrupted one"


# --------------------------------------------------------------------------------------- 2
def test_a_second_process_on_the_same_run_is_refused_naming_the_first(tiny_overrides, tmp_path, start_cli, run_cli):
    first = start_cli("fit", "--config", "conf/quickstart.yaml", *tiny_overrides, "run_name=run",
                      "train.num_env_steps=2400", "tracking.video=false")
    lock = tmp_path / "runs" / "run" / ".lock"
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text().strip()):
        assert time.monotonic() < deadline and first.poll() is None, first.stderr.read()[-2000:] if first.poll() else ""
        time.sleep(0.2)
    try:
        for extra in ([], ["--resume", "auto"]):
            result = run_cli("fit", "--config", "conf/quickstart.yaml", *tiny_overrides, "run_name=run",
                             "train.num_env_steps=2400", "tracking.video=false", *extra, timeout=300)
            assert result.returncode == 2, result.stderr[-2000:]
            assert f"in use by process {first.pid}" in result.stderr and "Traceback" not in result.stderr
    finally:
        first.kill()
        first.communicate()


# --------------------------------------------------------------------------------------- 3
def test_a_resume_may_change_bookkeeping_keys_and_a_copied_runs_directory_uses_its_own_store(finished, tmp_path):
    run_dir = copy_without_newest_snapshot(finished, tmp_path / "copy")
    cfg = load_config(run_dir / "config.yaml", ["trainer.checkpoint_every_updates=7", "trainer.log_every_updates=3",
                                                f"output_dir={tmp_path / 'copy'}"])
    fit(cfg, resume=str(run_dir))
    client, (run,) = mlflow_runs(tmp_path / "copy")
    assert run.info.status == "FINISHED"
    assert run.data.tags["cfg.trainer.checkpoint_every_updates"] == "7"
    evals = sorted(m.step for m in client.get_metric_history(run.info.run_id, "eval/return_mean"))
    assert evals == [0, 160, 320], "no evaluation repeated or missing in the copied store"
    _, (original,) = mlflow_runs(finished)
    assert original.data.tags["cfg.trainer.checkpoint_every_updates"] == "10", \
        "the resume of the copy wrote into the original store"


@pytest.mark.parametrize("store", ["moved", "none"])
def test_a_resume_may_name_another_store_or_none_when_its_own_is_damaged(finished, tmp_path, store, capsys):
    run_dir = copy_without_newest_snapshot(finished, tmp_path / "copy")
    own = tmp_path / "copy" / "mlflow.db"
    own.write_bytes(b"\0" * own.stat().st_size)  # the store beside the run is damaged
    command = ["fit", "--config", str(run_dir / "config.yaml"), "--resume", str(run_dir), f"output_dir={tmp_path / 'copy'}"]
    assert main(command) == 2
    assert f"the MLflow store {own} is damaged" in capsys.readouterr().err
    moved = tmp_path / "moved" / "mlflow.db"
    change = f"tracking.uri=sqlite:///{moved}" if store == "moved" else "tracking.mlflow=false"
    hash_before = (run_dir / "config_hash").read_text()
    with pytest.warns(UserWarning, match="does not hold") if store == "moved" else contextlib.nullcontext():
        assert main([*command, change]) == 0
    assert rows(run_dir) == rows(finished / "run"), "the resumed history differs from the uninterrupted one"
    assert (run_dir / "config_hash").read_text() == hash_before, "where a run is tracked changed its identity"
    saved = load_config(run_dir / "config.yaml").tracking
    assert (saved.uri, saved.mlflow) == ((f"sqlite:///{moved}", True) if store == "moved" else (None, False))
    if store == "none":  # MLflow is filled in later, into a new store
        assert main(["sync", str(run_dir), "--tracking-uri", f"sqlite:///{moved}"]) == 0
    client, (run,) = mlflow_runs(moved.parent)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["mlr.mask_ratio"] == "0.5" and run.data.tags["algorithm"] == "sac_mlr"
    evals = sorted(m.step for m in client.get_metric_history(run.info.run_id, "eval/return_mean"))
    assert evals == [0, 160, 320], "the new store lacks the history from before the resume"
    record = json.loads((run_dir / "mlflow_run.json").read_text())
    assert (record["run_id"], record["tracking_uri"]) == (run.info.run_id, f"sqlite:///{moved}")


# --------------------------------------------------------------------------------------- 4
def test_a_run_without_a_complete_snapshot_is_restarted_from_scratch(finished, tmp_path, tiny_overrides):
    shutil.copytree(finished, tmp_path / "runs")
    run_dir = tmp_path / "runs" / "run"
    for snapshot in snapshots(run_dir / "checkpoints"):  # all snapshots corrupt: none can be resumed
        model = snapshot / "model.ckpt"
        model.write_bytes(model.read_bytes()[:100])
    old_run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    assert main(["fit", "--config", "conf/quickstart.yaml", *tiny_overrides, "tracking.video=false", "run_name=run"]) == 2
    with pytest.warns(UserWarning, match="falling back"):
        fit(tiny(tiny_overrides), resume="auto")
    attempt = run_dir / "previous-attempts" / "1"
    assert (attempt / "metrics.csv").is_file() and (attempt / "checkpoints").is_dir(), "the old attempt was not kept"
    assert [s.name for s in snapshots(run_dir / "checkpoints")] == [snapshot_name(UPDATES), snapshot_name(10)]
    assert rows(run_dir) == rows(finished / "run"), "the restarted history is not a fresh one"
    client, runs = mlflow_runs(tmp_path / "runs")
    statuses = {r.info.run_id: r.info.status for r in runs}
    assert statuses.pop(old_run_id) == "FAILED" and list(statuses.values()) == ["FINISHED"]
    assert "restarted from scratch" in client.get_run(old_run_id).data.tags["status_reason"]


# --------------------------------------------------------------------------------------- 5
def _create_store(path: str) -> None:
    ensure_embedded_store(Path(path))


def test_the_embedded_store_is_created_once_and_a_half_migrated_one_is_named(tmp_path, tiny_overrides):
    store = tmp_path / "race" / "mlflow.db"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_create_store, args=(str(store),)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0], "two first runs raced on the store's migration"
    MlflowClient(f"sqlite:///{store}").search_experiments()

    broken = tmp_path / "runs" / "mlflow.db"  # what an interrupted migration leaves behind
    broken.parent.mkdir()
    with sqlite3.connect(broken) as db:
        db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        db.execute("INSERT INTO alembic_version VALUES ('451aebb31d03')")
    result = main(["fit", "--config", "conf/quickstart.yaml", *tiny_overrides, "run_name=run"])
    assert result == 2
    assert not (tmp_path / "runs" / "run").exists(), "a run directory was created for an unusable store"


# --------------------------------------------------------------------------------------- 6
def test_a_disk_filled_by_another_writer_during_a_snapshot_is_an_error_not_a_signal(tiny_overrides, tmp_path, monkeypatch):
    disk = tmp_path / "disk"
    disk.mkdir()
    assert subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)]).returncode == 0
    try:
        real_save = callbacks.save_rank_state
        saves = []

        def another_writer_fills_the_disk(directory, rank, stream):
            saves.append(directory.name)
            if len(saves) != 2:
                return real_save(directory, rank, stream)
            filler = disk / "filler"
            with open(filler, "wb") as handle:  # take every free byte, as another process would
                try:
                    while True:
                        handle.write(b"\0" * 2**20)
                except OSError:
                    pass
            try:
                real_save(directory, rank, stream)
            finally:
                filler.unlink()

        monkeypatch.setattr(callbacks, "save_rank_state", another_writer_fills_the_disk)
        cfg = load_config(None, [o for o in tiny_overrides if not o.startswith("output_dir")]
                          + [f"output_dir={disk}", "run_name=run", "tracking.video=false", "tracking.mlflow=false"])
        with pytest.warns(UserWarning, match=rf"writing checkpoint .*{snapshot_name(20)} failed .*No space left"):
            fit(cfg)
        checkpoints = disk / "run" / "checkpoints"
        assert [s.name for s in snapshots(checkpoints)] == [snapshot_name(UPDATES), snapshot_name(10)]
        assert not list(checkpoints.glob(".*.tmp"))
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def test_a_failed_final_snapshot_does_not_fail_a_finished_run(tiny_overrides, tmp_path, monkeypatch, files_refused):
    real_save = callbacks.save_rank_state

    def final_save_fails(directory, rank, stream):
        if directory.name != f".{snapshot_name(UPDATES)}.tmp":
            return real_save(directory, rank, stream)
        with files_refused():
            real_save(directory, rank, stream)

    monkeypatch.setattr(callbacks, "save_rank_state", final_save_fails)
    with pytest.warns(UserWarning, match="the final snapshot failed"):
        run_dir = fit(tiny(tiny_overrides, "trainer.checkpoint_every_updates=10"))
    evals = [r["step"] for r in rows(run_dir) if r.get("eval/return_mean")]
    assert evals == ["0", "160", "320"] and (run_dir / "learning_curve.png").is_file()
    _, (run,) = mlflow_runs(tmp_path / "runs")
    assert run.info.status == "FINISHED"


# --------------------------------------------------------------------------------------- 7
def test_a_tracking_server_that_disappears_costs_seconds_and_sync_fills_mlflow_in(mlflow_server_factory, tiny_overrides,
                                                                                  tmp_path, start_cli, run_cli):
    server = mlflow_server_factory()
    proc = start_cli("fit", "--config", "conf/quickstart.yaml", *tiny_overrides, "run_name=run", "tracking.video=false",
                     f"tracking.uri={server.url}")
    checkpoints = tmp_path / "runs" / "run" / "checkpoints"
    deadline = time.monotonic() + 300
    while not (checkpoints / snapshot_name(10) / "MANIFEST.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.1)
    server.stop()
    stopped = time.monotonic()
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert time.monotonic() - stopped < 120, "training stalled on the dead tracking server"
    assert "MLflow stopped working" in stderr and "sync" in stderr
    run_dir = tmp_path / "runs" / "run"
    assert [r["step"] for r in rows(run_dir) if r.get("eval/return_mean")] == ["0", "160", "320"]

    server.start()  # the server comes back: sync fills in what it missed
    result = run_cli("sync", str(run_dir), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    client = MlflowClient(server.url)
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    assert sorted(m.step for m in client.get_metric_history(run_id, "eval/return_mean")) == [0, 160, 320]
    assert "status FINISHED" in result.stdout and client.get_run(run_id).info.status == "FINISHED"


# ------------------------------------------------------------------------------------- 8, 13
def test_sigterm_during_an_evaluation_stops_after_one_episode_and_the_evaluation_is_repeated(tiny_overrides, tmp_path,
                                                                                              monkeypatch):
    real_seed = evaluation.episode_seed  # asked once as each episode starts
    episodes = []

    def sigterm_during_the_second_evaluation(seed, env_steps, episode):
        episodes.append(1)
        if len(episodes) == 12:  # 10 episodes at step 0, then the 2nd of the evaluation at 160
            signal.raise_signal(signal.SIGTERM)
        return real_seed(seed, env_steps, episode)

    monkeypatch.setattr(evaluation, "episode_seed", sigterm_during_the_second_evaluation)
    with pytest.raises(RunInterrupted):
        fit(tiny(tiny_overrides, "eval.num_episodes=10"))
    assert len(episodes) == 12, "the stop waited for the whole evaluation"
    run_dir = tmp_path / "runs" / "run"
    assert [r["step"] for r in rows(run_dir) if r.get("eval/return_mean")] == ["0"]
    _, (run,) = mlflow_runs(tmp_path / "runs")
    assert run.info.status == "KILLED" and "SIGTERM" in run.data.tags["status_reason"]

    monkeypatch.setattr(evaluation, "episode_seed", real_seed)
    fit(tiny(tiny_overrides, "eval.num_episodes=10"), resume="auto")
    assert [r["step"] for r in rows(run_dir) if r.get("eval/return_mean")] == ["0", "160", "320"]
    _, (run,) = mlflow_runs(tmp_path / "runs")
    assert run.info.status == "FINISHED"


@pytest.fixture(scope="module")
def uninterrupted_eval(tmp_path_factory, tiny_base_overrides):
    """The tiny run with 3 evaluation episodes per evaluation, never stopped."""
    out = tmp_path_factory.mktemp("uninterrupted_eval")
    fit(load_config(None, tiny_base_overrides + [f"output_dir={out}", "tracking.video=false", "run_name=run",
                                                 "eval.num_episodes=3"]))
    return out / "run"


@pytest.mark.parametrize("stop_at_episode, stopped_step", [(5, 160), (8, 320)], ids=["intermediate", "final"])
def test_sigterm_during_an_evaluation_then_resume_is_identical_to_an_uninterrupted_run(
        stop_at_episode, stopped_step, uninterrupted_eval, tiny_overrides, tmp_path, monkeypatch):
    """Evaluations at 0, 160 and 320, 3 episodes each: a SIGTERM during the 2nd episode at 160 (the
    5th episode of the run) or at 320, the final one. The resumed run evaluates that point again
    with the weights it had, and ends with the same weights, optimiser, metrics.csv and returns."""
    real_seed = evaluation.episode_seed  # asked once as each episode starts
    episodes = []

    def sigterm_during_an_episode(seed, env_steps, episode):
        episodes.append(1)
        if len(episodes) == stop_at_episode:
            signal.raise_signal(signal.SIGTERM)
        return real_seed(seed, env_steps, episode)

    monkeypatch.setattr(evaluation, "episode_seed", sigterm_during_an_episode)
    with pytest.raises(RunInterrupted):
        fit(tiny(tiny_overrides, "eval.num_episodes=3"))
    run_dir = tmp_path / "runs" / "run"
    logged = [int(r["step"]) for r in rows(run_dir) if r.get("eval/return_mean")]
    assert stopped_step not in logged and logged == [s for s in (0, 160) if s < stopped_step]
    monkeypatch.setattr(evaluation, "episode_seed", real_seed)
    fit(tiny(tiny_overrides, "eval.num_episodes=3"), resume="auto")

    reference, resumed = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=False)
                          for d in (uninterrupted_eval, run_dir))
    assert int(resumed["state_dict"]["num_updates"]) == UPDATES
    assert [k for k in reference["state_dict"] if not torch.equal(reference["state_dict"][k],
                                                                  resumed["state_dict"][k])] == []
    for opt_a, opt_b in zip(reference["optimizer_states"], resumed["optimizer_states"]):
        assert all(torch.equal(s["exp_avg"], opt_b["state"][p]["exp_avg"]) for p, s in opt_a["state"].items())
    histories = [[(h["env_steps"], h["returns"]) for h in ckpt["callbacks"]["PeriodicEvaluation"]["history"]]
                 for ckpt in (reference, resumed)]
    assert [step for step, _ in histories[1]] == [0, 160, 320], "the final evaluation is missing or repeated"
    assert histories[1] == histories[0], "the evaluations' returns differ from the uninterrupted run's"
    assert rows(run_dir) == rows(uninterrupted_eval), "metrics.csv differs from the uninterrupted run's"
    _, (run,) = mlflow_runs(tmp_path / "runs")
    assert run.info.status == "FINISHED"


def test_a_crash_at_start_up_marks_the_mlflow_run_failed_and_keeps_its_traceback(tiny_overrides, tmp_path, monkeypatch, recwarn,
                                                                                 capsys):
    def broken_agent(*args, **kwargs):
        raise RuntimeError("the agent could not be built")

    from mlr_lightning.domains.dmc import DMC

    monkeypatch.setattr(DMC, "make_agent", broken_agent)
    assert main(["fit", "--config", "conf/quickstart.yaml", *tiny_overrides, "run_name=run"]) == 1
    client, (run,) = mlflow_runs(tmp_path / "runs")
    assert run.info.status == "FAILED"
    assert "the agent could not be built" in run.data.tags["status_reason"]
    assert not [w for w in recwarn if "could not save a checkpoint" in str(w.message)]
    # The traceback reaches the terminal and the run directory; the last line says where.
    err = capsys.readouterr().err
    log = tmp_path / "runs" / "run" / "error.log"
    assert "Traceback" in err and "RuntimeError: the agent could not be built" in err
    assert err.strip().splitlines()[-1] == (f"error: fit stopped on an unexpected RuntimeError (traceback above). The "
                                            f"traceback is also in {log}; the run has no snapshot yet: the same "
                                            "command with --resume auto starts it again")
    assert "in broken_agent" in log.read_text() and "RuntimeError: the agent could not be built" in log.read_text()


def test_ctrl_c_at_start_up_marks_the_mlflow_run_killed_in_one_line(tiny_overrides, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    from mlr_lightning.domains.dmc import DMC

    monkeypatch.setattr(DMC, "make_agent", interrupted)
    assert main(["fit", "--config", "conf/quickstart.yaml", *tiny_overrides, "run_name=run"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == ("interrupted during start-up: fit trained nothing "
                                                                "yet; run the same command again")
    _, (run,) = mlflow_runs(tmp_path / "runs")
    assert run.info.status == "KILLED" and "interrupted during start-up" in run.data.tags["status_reason"]
    assert not (tmp_path / "runs" / "run" / "error.log").exists(), "a Ctrl-C is a stop, not an error"


def test_a_deleted_run_record_continues_the_same_mlflow_run(finished, tmp_path):
    run_dir = copy_without_newest_snapshot(finished, tmp_path / "out")
    (run_dir / "mlflow_run.json").unlink()
    with pytest.warns(UserWarning, match="mlflow_run.json is missing"):
        fit(load_config(run_dir / "config.yaml", [f"output_dir={tmp_path / 'out'}"]), resume="auto")
    client, runs = mlflow_runs(tmp_path / "out")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "eval/return_mean")) == [0, 160, 320]


# -------------------------------------------------------------------------------------- 10
def test_a_diverged_state_is_never_the_last_good_snapshot_and_a_resume_may_change_the_learning_rate(
        tiny_overrides, tmp_path, monkeypatch):
    real_step = SACMLRAgent.training_step

    def diverging_step(self, batch, batch_idx):
        if int(self.num_updates) == 14:  # a weight blows up while the losses stay finite
            with torch.no_grad():
                self.critic.q1[0].weight[0, 0] = 1e6
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(SACMLRAgent, "training_step", diverging_step)
    checkpoints = tmp_path / "runs" / "run" / "checkpoints"
    with pytest.raises(RunFailed, match=rf"critic.q1.0.weight reached 1e\+06 at update 20.*{snapshot_name(10)}"):
        fit(tiny(tiny_overrides))
    assert [s.name for s in snapshots(checkpoints)] == [snapshot_name(10)]

    monkeypatch.setattr(SACMLRAgent, "training_step", real_step)
    changed = tiny(tiny_overrides, "sac.critic_lr=0.0005")
    assert main(["fit", "--config", str(checkpoints.parent / "config.yaml"), "--resume", str(checkpoints.parent),
                 "sac.critic_lr=0.0005"]) == 2, "a changed learning rate without --allow-change"
    fit(changed, resume=str(checkpoints.parent), allow_change=["sac.critic_lr"])
    final = torch.load(checkpoints / "last.ckpt", weights_only=False, map_location="cpu")
    assert final["optimizer_states"][0]["param_groups"][0]["lr"] == 0.0005
    assert load_config(checkpoints.parent / "config.yaml").sac.critic_lr == 0.0005


# ------------------------------------------------------------------------- round two: 1-3
def test_a_divergence_recovery_from_an_older_snapshot_leaves_mlflow_equal_to_metrics_csv(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "out")
    run_dir = tmp_path / "out" / "run"
    before = {int(r["step"]): r for r in rows(run_dir)}
    cfg = load_config(run_dir / "config.yaml", [f"output_dir={tmp_path / 'out'}", "sac.critic_lr=0.0005"])
    fit(cfg, resume=str(run_dir / "checkpoints" / snapshot_name(10)), allow_change=["sac.critic_lr"])

    after = rows(run_dir)
    replayed = [r for r in after if int(r["step"]) > 240 and "train/critic_loss" in r]
    assert replayed and all(r["train/critic_loss"] != before[int(r["step"])]["train/critic_loss"] for r in replayed), \
        "the recovery must take another trajectory (else this test proves nothing)"
    client, (run,) = mlflow_runs(tmp_path / "out")
    for key in sorted(set().union(*after) - {"step", "epoch"} - {k for k in set().union(*after) if k.startswith("time/")}):
        in_csv = [(int(r["step"]), float(r[key])) for r in after if key in r]
        in_mlflow = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert in_mlflow == in_csv, f"{key}: MLflow and metrics.csv disagree"
    assert run.data.metrics["eval/return_mean"] == float(after[-1]["eval/return_mean"] if "eval/return_mean" in after[-1]
                                                         else [r for r in after if "eval/return_mean" in r][-1]["eval/return_mean"])


def test_sync_gives_a_run_whose_process_died_a_terminal_status(finished, tmp_path, run_cli):
    shutil.copytree(finished, tmp_path / "out")
    run_dir = tmp_path / "out" / "run"
    record = json.loads((run_dir / "mlflow_run.json").read_text())
    assert record["status"] == "FINISHED"
    client, (run,) = mlflow_runs(tmp_path / "out")
    client.update_run(run.info.run_id, status="RUNNING")  # as after a SIGKILL: RUNNING, nothing recorded
    (run_dir / "mlflow_run.json").write_text(json.dumps({k: record[k] for k in ("run_id", "store")}))
    result = run_cli("sync", str(run_dir), timeout=120)
    assert result.returncode == 0 and "status KILLED" in result.stdout, result.stderr[-2000:]
    run = client.get_run(run.info.run_id)
    assert run.info.status == "KILLED" and f"--resume {run_dir}" in run.data.tags["status_reason"]


def test_sighup_saves_a_snapshot_and_marks_the_run_killed(tiny_overrides, tmp_path, start_cli):
    proc = start_cli("fit", "--config", "conf/quickstart.yaml", *tiny_overrides, "run_name=run", "tracking.video=false")
    checkpoints = tmp_path / "runs" / "run" / "checkpoints"
    deadline = time.monotonic() + 300
    while not (checkpoints / snapshot_name(10) / "MANIFEST.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGHUP)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGHUP, stderr[-3000:]
    assert "Traceback" not in stderr
    newest = snapshots(checkpoints)[0]
    assert (newest / "MANIFEST.json").exists() and int(newest.name.split("-")[1]) >= 10
    _, (run,) = mlflow_runs(tmp_path / "runs")
    assert run.info.status == "KILLED" and "SIGHUP" in run.data.tags["status_reason"]


# ------------------------------------------------------------- damaged state: one line, no traceback
def resume_line(run_cli, run_dir: Path, config: Path | None = None, *extra: str) -> str:
    """``fit --resume`` of ``run_dir`` in a fresh interpreter: must fail with one line (exit 2)."""
    result = run_cli("fit", "--config", str(config or run_dir / "config.yaml"), "--resume", str(run_dir),
                     f"output_dir={run_dir.parent}", *extra, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]  # the error; a warm-up note may come before it
    assert line.startswith(("error: ", "config error: ")), result.stderr[-3000:]
    return line


@pytest.mark.parametrize("damage", ["garbage", "truncated", "locked"])
def test_a_damaged_or_locked_store_is_one_line_naming_it(damage, finished, tmp_path, run_cli):
    run_dir = copy_without_newest_snapshot(finished, tmp_path / "out")
    store = tmp_path / "out" / "mlflow.db"
    if damage == "garbage":
        store.write_bytes(b"this is not a database" * 100)
    elif damage == "truncated":
        store.write_bytes(store.read_bytes()[:3000])
    holder = sqlite3.connect(store, isolation_level=None)
    if damage == "locked":
        holder.execute("BEGIN EXCLUSIVE")  # another process writing, forever
    try:
        line = resume_line(run_cli, run_dir)
    finally:
        holder.close()
    assert str(store) in line
    assert ("locked by another process" if damage == "locked" else f"mv {store} {store}.damaged") in line
    assert [s.name for s in snapshots(run_dir / "checkpoints")] == [snapshot_name(10)], "the resume must not start"


def test_a_run_directory_moved_alone_to_another_output_dir_resumes_into_that_store(finished, tmp_path, run_cli):
    copy_without_newest_snapshot(finished, tmp_path / "out")
    (tmp_path / "elsewhere").mkdir()
    shutil.move(tmp_path / "out" / "run", tmp_path / "elsewhere" / "run")
    run_dir = tmp_path / "elsewhere" / "run"
    result = run_cli("fit", "--config", str(run_dir / "config.yaml"), "--resume", str(run_dir),
                     f"output_dir={tmp_path / 'elsewhere'}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "does not hold" in result.stderr and "Traceback" not in result.stderr
    client, (run,) = mlflow_runs(tmp_path / "elsewhere")
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "eval/return_mean")) == [0, 160, 320]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "deleted"])
def test_a_damaged_config_yaml_is_one_line_naming_the_file_and_the_fix(damage, finished, tmp_path, run_cli):
    run_dir = copy_without_newest_snapshot(finished, tmp_path / "out")
    config = run_dir / "config.yaml"
    original = tmp_path / "started-with.yaml"
    shutil.copy(config, original)
    {"garbage": lambda: config.write_bytes(b"\x00\xff\xfe garbage: [\n"),
     "truncated": lambda: config.write_text(config.read_text()[:40]),
     "deleted": config.unlink}[damage]()
    line = resume_line(run_cli, run_dir, original)
    assert f"{config} is missing or damaged" in line and "--print-config" in line
    assert [s.name for s in snapshots(run_dir / "checkpoints")] == [snapshot_name(10)]


@pytest.mark.parametrize("damage", ["header deleted", "emptied", "NUL-filled"])
def test_a_damaged_metrics_csv_is_one_line_and_kept_as_it_is(damage, finished, tmp_path, run_cli):
    run_dir = copy_without_newest_snapshot(finished, tmp_path / "out")
    metrics = run_dir / "metrics.csv"
    text = metrics.read_bytes()
    damaged = {"header deleted": text.split(b"\n", 1)[1], "emptied": b"", "NUL-filled": b"\0" * len(text)}[damage]
    metrics.write_bytes(damaged)
    line = resume_line(run_cli, run_dir)
    assert f"{metrics} is damaged" in line and f"mv {metrics} {metrics}.damaged" in line
    assert metrics.read_bytes() == damaged, "the damaged file is kept as it was"


def test_a_read_only_copy_of_a_run_is_one_line(finished, tmp_path, run_cli):
    copy_without_newest_snapshot(finished, tmp_path / "out")
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    assert subprocess.run(["mount", "--bind", str(tmp_path / "out"), str(read_only)]).returncode == 0
    try:
        assert subprocess.run(["mount", "-o", "remount,ro,bind", str(read_only)]).returncode == 0
        line = resume_line(run_cli, read_only / "run")
        assert "cannot" in line and str(read_only) in line
    finally:
        subprocess.run(["umount", "-l", str(read_only)])


def test_a_snapshot_of_another_run_is_refused_in_one_line(finished, tmp_path, run_cli):
    """A snapshot copied in from another run (its manifest names another run_uid) is not resumed as this
    run's; nor is ``--resume`` of one run under another ``run_name``. Nothing is changed by either."""
    run_dir = copy_without_newest_snapshot(finished, tmp_path / "out")
    (run_dir / "run_uid").write_text("f" * 32 + "\n")  # this directory is another run than the snapshots' writer
    line = resume_line(run_cli, run_dir)
    assert "written by another run" in line and str(run_dir / "checkpoints") in line
    line = resume_line(run_cli, run_dir, None, "run_name=another")
    assert "belongs to run run" in line and "run_name='another'" in line
    assert [s.name for s in snapshots(run_dir / "checkpoints")] == [snapshot_name(10)]
    assert not (tmp_path / "out" / "another").exists()


def test_a_requeued_resume_auto_without_run_name_restarts_its_own_earlier_attempt(tiny_overrides, tmp_path, monkeypatch):
    from mlr_lightning.domains.dmc import DMC

    def killed(*args, **kwargs):
        raise RuntimeError("killed before the first snapshot")

    cfg = load_config(None, tiny_overrides + ["tracking.video=false"])  # no run_name: a dated directory
    with monkeypatch.context() as patch:
        patch.setattr(DMC, "make_agent", killed)
        with pytest.raises(RuntimeError):
            fit(cfg, resume="auto")
    client, (first,) = mlflow_runs(tmp_path / "runs")
    client.update_run(first.info.run_id, status="RUNNING")  # as a SIGKILL leaves it
    fit(cfg, resume="auto")  # the requeued job: the same command
    run_dirs = [p for p in (tmp_path / "runs").iterdir() if (p / "config.yaml").exists()]
    assert len(run_dirs) == 1, "the requeued attempt started a second directory"
    assert (run_dirs[0] / "previous-attempts" / "1" / "mlflow_run.json").exists()
    statuses = {r.info.run_id: r.info.status for r in mlflow_runs(tmp_path / "runs")[1]}
    assert statuses.pop(first.info.run_id) == "FAILED" and list(statuses.values()) == ["FINISHED"]
