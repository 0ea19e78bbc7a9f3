"""Interrupted runs continue as if nothing happened: SIGTERM, SIGKILL and Ctrl-C against an
uninterrupted run of the same config, on real dm_control (deterministic on CPU, so bit-identical)."""

import csv
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from mlr_lightning.training.snapshot import CheckpointError, resolve_snapshot, snapshot_name, snapshots, verify_snapshot

pytestmark = pytest.mark.slow  # real runs end to end: minutes

# 60 agent steps - 20 random = 40 updates, a snapshot every 10: long enough to interrupt mid-run.
LONGER = ["train.num_env_steps=480", "eval.every_env_steps=160", "tracking.video=false"]


@pytest.fixture(scope="module")
def start(start_cli, tiny_base_overrides):
    """``start(output_dir, *extra)``: the tiny run named ``run`` under ``output_dir``, in the background."""
    def start_run(output_dir: Path, *extra: str) -> subprocess.Popen:
        return start_cli("fit", "--config", "conf/quickstart.yaml", *tiny_base_overrides, *LONGER,
                         f"output_dir={output_dir}", "run_name=run", *extra)
    return start_run


def wait_for_snapshot(run_dir: Path, updates: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not (run_dir / "checkpoints" / snapshot_name(updates) / "MANIFEST.json").exists():
        assert proc.poll() is None, f"the run ended before snapshot {updates}: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no snapshot appeared"
        time.sleep(0.05)


def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")


def metrics_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if not k.startswith(("time/", "cost/"))}  # timings differ run to run
                for row in csv.DictReader(handle)]


def mlflow_history(output_dir: Path, key: str) -> list[tuple[int, float]]:
    client = MlflowClient(f"sqlite:///{output_dir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("mlr_lightning").experiment_id])
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, start):
    out = tmp_path_factory.mktemp("uninterrupted")
    proc = start(out)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return out


def assert_same_run(resumed_out: Path, reference_out: Path) -> None:
    a, b = final_state(reference_out / "run"), final_state(resumed_out / "run")
    assert int(b["state_dict"]["num_updates"]) == 40
    differing = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not differing, f"weights differ from the uninterrupted run: {differing[:5]}"
    for i, (opt_a, opt_b) in enumerate(zip(a["optimizer_states"], b["optimizer_states"])):
        for p, state in opt_a["state"].items():
            assert torch.equal(state["exp_avg"], opt_b["state"][p]["exp_avg"]), f"optimizer {i} moments differ"
    eval_a, eval_b = (s["callbacks"]["PeriodicEvaluation"]["history"] for s in (a, b))
    assert [(h["env_steps"], h["returns"]) for h in eval_a] == [(h["env_steps"], h["returns"]) for h in eval_b]
    assert metrics_rows(resumed_out / "run") == metrics_rows(reference_out / "run"), "metrics.csv differs"
    for key in ("train/critic_loss", "eval/return_mean"):
        history = mlflow_history(resumed_out, key)
        assert len({step for step, _ in history}) == len(history), f"{key}: a step was logged twice"
        assert history == mlflow_history(reference_out, key), f"{key}: the MLflow run differs"


def test_sigterm_saves_exits_cleanly_and_the_resumed_run_is_identical(uninterrupted, tmp_path, start, run_cli):
    proc = start(tmp_path)
    wait_for_snapshot(tmp_path / "run", 10, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr
    resume_line = next(line for line in stderr.splitlines() if line.startswith("Resume with: "))
    stopped = snapshots(tmp_path / "run" / "checkpoints")[0]
    # The snapshot of the stop (at the update boundary where Lightning raised): update 10 again when
    # the signal came while update 10's snapshot was being finished.
    assert int(stopped.name.split("-")[1]) >= 10
    verify_snapshot(stopped)

    command = resume_line.removeprefix("Resume with: ").split()
    assert command[:4] == ["python", "-m", "mlr_lightning", "fit"]
    result = run_cli(*command[3:], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(tmp_path, uninterrupted)


def test_sigkill_after_a_snapshot_then_resume_auto_is_identical(uninterrupted, tmp_path, start):
    proc = start(tmp_path)
    wait_for_snapshot(tmp_path / "run", 20, proc)
    proc.kill()
    proc.communicate()
    proc = start(tmp_path, "--resume", "auto")  # the same command a requeued job runs
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert f"Resumed from {tmp_path / 'run' / 'checkpoints'}" in stdout
    assert_same_run(tmp_path, uninterrupted)


def test_ctrl_c_saves_at_an_update_boundary_and_names_the_resume_command(tmp_path, start):
    proc = start(tmp_path)
    wait_for_snapshot(tmp_path / "run", 10, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGINT, stderr[-3000:]
    assert f"--resume {tmp_path / 'run'}" in stderr
    verify_snapshot(snapshots(tmp_path / "run" / "checkpoints")[0])


def test_a_second_ctrl_c_stops_at_once_without_a_snapshot(tmp_path, start):
    """Wherever the second Ctrl-C lands (an update, the environment, the replay write), nothing
    treats it as an error to survive (a crashing environment is rebuilt, for instance)."""
    proc = start(tmp_path)
    wait_for_snapshot(tmp_path / "run", 10, proc)
    proc.send_signal(signal.SIGINT)
    for line in proc.stderr:  # the first one is handled (two pending SIGINTs would be delivered as one)
        if line.startswith("Ctrl-C: finishing the current update"):
            break
    proc.send_signal(signal.SIGINT)  # before the graceful stop has saved its snapshot
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGINT, stderr[-3000:]
    assert "stopped at once, without a snapshot" in stderr and "environment crashed" not in stderr


def test_a_corrupted_snapshot_is_refused_by_name_and_auto_falls_back_to_the_previous_good_one(uninterrupted, tmp_path, run_cli):
    import shutil

    shutil.copytree(uninterrupted, tmp_path / "out")
    checkpoints = tmp_path / "out" / "run" / "checkpoints"
    newest, previous = snapshots(checkpoints)[:2]
    model = newest / "model.ckpt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # a truncated write

    with pytest.raises(CheckpointError, match=rf"model.ckpt has \d+ bytes.*truncated.*{previous}"):
        resolve_snapshot(newest)
    result = run_cli("fit", "--config", str(tmp_path / "out" / "run" / "config.yaml"), "--resume", str(newest))
    assert result.returncode == 2 and "corrupted" in result.stderr and "Traceback" not in result.stderr
    with pytest.warns(UserWarning, match="falling back"):
        assert resolve_snapshot(tmp_path / "out" / "run") == previous


def test_resume_refuses_a_config_that_changes_the_experiment(uninterrupted, run_cli):
    result = run_cli("fit", "--config", str(uninterrupted / "run" / "config.yaml"), "--resume",
                     str(uninterrupted / "run"), "sac.critic_lr=0.5")
    assert result.returncode == 2
    assert "sac.critic_lr: 0.001 -> 0.5" in result.stderr


def test_atari_resume_between_the_two_updates_of_a_step_is_identical(tmp_path, one_thread):
    """Rainbow+MLR on real Pong: emulator state, prioritized replay (priorities) and the update owed
    for the last step (2 updates per step; snapshot 15 falls between them) all come back."""
    import shutil

    from mlr_lightning.cli import main

    args = ["fit", "--config", "conf/atari/pong.yaml", "train.num_env_steps=50", "train.init_steps=30",
            "train.batch_size=4", "mlr.seq_len=4", "mlr.block_size=2", "mlr.decoder_dim=32", "rainbow.hidden_dim=32",
            "rainbow.n_step=3", "replay.capacity=500", "eval.num_episodes=1", "eval.max_steps=20",
            "trainer.accelerator=cpu", "trainer.checkpoint_every_updates=5", "trainer.keep_checkpoints=10",
            "tracking.mlflow=false", "tracking.video=false", "run_name=run"]
    assert main([*args, f"output_dir={tmp_path / 'a'}"]) == 0
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    checkpoints = tmp_path / "b" / "run" / "checkpoints"
    for later in snapshots(checkpoints)[: -3]:  # as if killed right after update 15
        shutil.rmtree(later)
    assert snapshots(checkpoints)[0].name == snapshot_name(15)
    assert main(["fit", "--config", str(tmp_path / "b" / "run" / "config.yaml"), "--resume",
                 str(checkpoints / snapshot_name(15))]) == 0

    a, b = final_state(tmp_path / "a" / "run"), final_state(tmp_path / "b" / "run")
    assert int(b["state_dict"]["num_updates"]) == 40
    differing = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not differing, f"weights differ from the uninterrupted run: {differing[:5]}"
    history = [s["callbacks"]["PeriodicEvaluation"]["history"] for s in (a, b)]
    assert [h["returns"] for h in history[0]] == [h["returns"] for h in history[1]]
    assert metrics_rows(tmp_path / "b" / "run") == metrics_rows(tmp_path / "a" / "run")
