"""Injected faults on a real tiny run: a NaN loss, a crashing renderer, a full disk while saving."""

import re

import pytest
import torch

from mlr_lightning.training.snapshot import LAST, snapshot_name, snapshots, verify_snapshot
from mlr_lightning.domains import load_config
from mlr_lightning.data.replay import UniformReplay
from mlr_lightning.data.stream import EnvironmentFailure
from mlr_lightning.envs.dmc_pixels import ActionRepeatPixels
from mlr_lightning.training import callbacks
from mlr_lightning.training.experiment import RunFailed, fit

pytestmark = pytest.mark.slow  # real runs end to end: minutes

UPDATES = 320 // 8 - 20  # tiny config: 40 agent steps, 20 of them random


def tiny(tiny_overrides, *extra):
    return load_config(None, tiny_overrides + ["tracking.video=false", "tracking.mlflow=false", "run_name=run", *extra])


def stream_counters(snapshot):
    return torch.load(snapshot / "stream-rank0.pt", weights_only=False)["counters"]


def test_a_nan_loss_stops_the_run_naming_the_update_the_loss_and_the_last_good_snapshot(tiny_overrides, tmp_path, monkeypatch):
    real_sample = UniformReplay.sample
    calls = []

    def reward_turns_nan(self, *args, **kwargs):  # a corrupted reward reaches the real critic loss
        batch = real_sample(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 15:
            batch["rl", "reward"][0] = float("nan")
        return batch

    monkeypatch.setattr(UniformReplay, "sample", reward_turns_nan)
    checkpoints = tmp_path / "runs" / "run" / "checkpoints"
    with pytest.raises(RunFailed, match=rf"non-finite train/critic_loss at update 14 \(then .*\); the last good checkpoint is "
                                        rf"{checkpoints / snapshot_name(10)}"):
        fit(tiny(tiny_overrides))
    assert [s.name for s in snapshots(checkpoints)] == [snapshot_name(10)], "a snapshot after the NaN was written"
    assert (checkpoints / LAST).resolve().parent.name == snapshot_name(10)
    verify_snapshot(checkpoints / snapshot_name(10))


def test_a_crashing_renderer_is_rebuilt_and_counted(tiny_overrides, tmp_path, monkeypatch):
    """The training environment fails on its 30th render, the evaluation environment on its 5th."""
    real_render = ActionRepeatPixels._add_pixel_observation
    # Per environment, in the order they were built: the one the agent's shapes are read off (rendered
    # once, at its reset), the evaluation's (as fit sets up), the training one (as the stream starts),
    # then the rebuilt ones.
    renders = {}

    def render_fails_once(self, time_step):
        renders.setdefault(id(self), []).append(1)
        order, count = list(renders).index(id(self)), len(renders[id(self)])
        if (order, count) in ((2, 30), (1, 5)):
            raise RuntimeError("EGL context lost")
        return real_render(self, time_step)

    monkeypatch.setattr(ActionRepeatPixels, "_add_pixel_observation", render_fails_once)
    with pytest.warns(UserWarning) as warned:
        run_dir = fit(tiny(tiny_overrides))
    messages = [str(w.message) for w in warned]
    assert any(re.match(r"environment crashed at agent step \d+ .*EGL context lost.*restart 1/10", m) for m in messages)
    assert any(m.startswith("evaluation environment crashed") for m in messages)
    assert len(renders) == 5, "each crashed environment is replaced by exactly one new one"
    counters = stream_counters(snapshots(run_dir / "checkpoints")[0])
    assert counters["env_restarts"] == 1
    assert counters["agent_steps"] == 320 // 8, "the run did not complete its steps after the rebuild"
    assert int(torch.load(run_dir / "checkpoints" / LAST, weights_only=False)["state_dict"]["num_updates"]) == UPDATES


def test_an_environment_that_keeps_crashing_stops_with_the_setting_to_change(tiny_overrides, tmp_path, monkeypatch):
    def step_always_fails(self, action):
        raise RuntimeError("simulator diverged")

    monkeypatch.setattr(ActionRepeatPixels, "step", step_always_fails)
    with pytest.warns(UserWarning), pytest.raises(EnvironmentFailure, match=r"crashed 3 times \(train.max_env_restarts=2\)"):
        fit(tiny(tiny_overrides, "train.max_env_restarts=2"))


def test_a_full_disk_while_saving_keeps_the_previous_snapshot_and_training_goes_on(tiny_overrides, tmp_path, monkeypatch, files_refused):
    """The kernel refuses the writes of the second snapshot (RLIMIT_FSIZE: EFBIG, as ENOSPC would)."""
    real_save = callbacks.save_rank_state
    checkpoints = tmp_path / "runs" / "run" / "checkpoints"
    seen = []

    def save_on_a_full_disk(directory, rank, stream):
        seen.append(directory.name)
        if len(seen) != 2:
            return real_save(directory, rank, stream)
        with files_refused():
            real_save(directory, rank, stream)
        # still inside the failed save: the previous snapshot is what last.ckpt names, intact
        assert (checkpoints / LAST).resolve().parent.name == snapshot_name(10)
        verify_snapshot(checkpoints / snapshot_name(10))

    monkeypatch.setattr(callbacks, "save_rank_state", save_on_a_full_disk)
    with pytest.warns(UserWarning, match=rf"writing checkpoint .*{snapshot_name(20)} failed .*File too large.*"
                                         rf"previous checkpoint .*{snapshot_name(10)} is intact"):
        fit(tiny(tiny_overrides, "trainer.checkpoint_every_updates=10"))
    assert seen[1] == f".{snapshot_name(20)}.tmp"
    assert not list(checkpoints.glob(".*.tmp")), "a half-written snapshot was left behind"
    verify_snapshot(snapshots(checkpoints)[0])
    assert snapshots(checkpoints)[0].name == snapshot_name(UPDATES)
