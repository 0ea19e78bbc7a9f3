"""The note for runs shorter than MLR's learning-rate warm-up: its numbers, when it appears, and that fit prints it."""

import mlr_lightning  # noqa: F401

import pytest

from mlr_lightning.cli import mlr_updates, warmup_note
from mlr_lightning.domains import load_config
from mlr_lightning.mlr.warmup import inverse_sqrt_schedule


def test_the_quickstart_note_gives_the_mean_rate_and_the_key():
    cfg = load_config("conf/quickstart.yaml")
    assert mlr_updates(cfg) == 600  # 8800 env steps / action repeat 8 = 1100 agent steps, 500 of them random
    factor = inverse_sqrt_schedule(6000, cfg.mlr.warmup_init_factor)
    mean = sum(factor(s) for s in range(600)) / 600
    assert mean == pytest.approx(0.0504, abs=1e-3)
    note = warmup_note(cfg)
    assert note.startswith("note: this run makes 600 MLR updates") and "\n" not in note
    assert "(mlr.warmup_steps=6000): MLR trains at ~5% of mlr.lr on average (10% at the end)" in note
    assert "mlr.warmup_steps=300 (~66% on average)" in note


@pytest.mark.parametrize("config, overrides", [
    ("conf/dmc/walker_walk.yaml", []),  # 49,000 updates: longer than the warm-up
    ("conf/quickstart.yaml", ["mlr.enabled=false"]),  # a Baseline has no MLR
    ("conf/quickstart.yaml", ["mlr.warmup_steps=600"]),  # exactly as long as the run
    ("conf/atari/quickstart.yaml", []),  # the Atari MLR loss shares one Adam without a warm-up
])
def test_no_note_where_the_warmup_does_not_outlast_the_run(config, overrides):
    assert warmup_note(load_config(config, overrides)) is None


def test_updates_count_the_action_repeat_and_updates_per_step():
    cfg = load_config("conf/dmc/cartpole_swingup.yaml", ["train.num_env_steps=24000", "train.updates_per_step=2"])
    assert mlr_updates(cfg) == 2 * (24000 // 8 - 1000)
    assert "makes 4000 MLR updates" in warmup_note(cfg)


def test_fit_prints_the_note_before_it_starts(tmp_path, capsys):
    from mlr_lightning.cli import main

    # A run directory holding an unfinished attempt stops fit before anything is trained, after the note.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.csv").write_text("step\n0\n")
    code = main(["fit", "--config", "conf/quickstart.yaml", "run_name=run", f"output_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("note: this run makes 600 MLR updates") and "--resume auto" in err
