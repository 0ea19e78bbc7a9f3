"""Bad configuration stops before anything is built, with a message naming the key and the fix."""

from pathlib import Path

import pytest

from mlr_lightning.config import ConfigError
from mlr_lightning.domains import load_config

CONF = Path(__file__).resolve().parents[1] / "conf"
PAPER_TASKS = ["finger_spin", "cartpole_swingup", "reacher_easy", "cheetah_run", "walker_walk", "ball_in_cup_catch"]


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_paper_task_configs_load_with_paper_values(task):
    cfg = load_config(CONF / "dmc" / f"{task}.yaml")
    assert cfg.env.task == task
    assert (cfg.mlr.seq_len, cfg.mlr.mask_ratio, cfg.mlr.batch_size, cfg.train.batch_size) == (16, 0.5, 128, 512)
    assert cfg.mlr.block_size == (4 if task in ("cartpole_swingup", "reacher_easy") else 8)
    expected_repeat = {"cartpole_swingup": 8, "finger_spin": 2, "walker_walk": 2}.get(task, 4)
    assert cfg.env.action_repeat == expected_repeat
    assert cfg.mlr.momentum_tau == (0.1 if task == "walker_walk" else 0.05)
    assert cfg.mlr.lr == (1e-4 if task == "cheetah_run" else 5e-4)


def test_quickstart_config_loads():
    cfg = load_config(CONF / "quickstart.yaml")
    assert cfg.mlr.seq_len % cfg.mlr.block_size == 0


def test_overrides_apply():
    cfg = load_config(CONF / "dmc" / "walker_walk.yaml", ["mlr.enabled=false", "seed=7"])
    assert cfg.mlr.enabled is False and cfg.seed == 7


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["mlr.ratio=0.5"], ["unknown config key 'mlr.ratio'", "mask_ratio"]),
        (["nonsense=1"], ["unknown config key 'nonsense'", "top level"]),
        (["train.batch_size=big"], ["wrong type for 'train.batch_size'", "big"]),
        (["mlr.enabled=maybe"], ["wrong type for 'mlr.enabled'"]),
        (["mlr.seq_len=10"], ["mlr.seq_len", "divisible by mlr.block_size (8)"]),
        (["mlr.mask_ratio=1.0"], ["mlr.mask_ratio", "(0, 1)"]),
        (["mlr.mask_ratio=0"], ["mlr.mask_ratio", "(0, 1)"]),
        (["mlr.patch_size=7"], ["mlr.patch_size", "divide env.image_size"]),
        (["train.num_env_steps=100001"], ["train.num_env_steps", "multiple of env.action_repeat"]),
        (["trainer.precision=fp8"], ["trainer.precision", "32-true"]),
        (["seed"], ["not of the form key=value"]),
    ],
)
def test_config_errors_name_the_key(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config(CONF / "dmc" / "finger_spin.yaml", overrides)
    for fragment in expected:
        assert fragment in str(err.value)


def test_unknown_key_in_yaml_names_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("env:\n  task: cartpole_swingup\n  action_repeat: 8\n  camera: 1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'env.camera' \(from .*bad.yaml\).*camera_id"):
        load_config(bad)


def test_missing_task_is_reported():
    with pytest.raises(ConfigError, match="missing value for env.action_repeat, env.task"):
        load_config(None)


def test_unknown_task_stops_before_any_environment(tmp_path):
    from mlr_lightning.envs.dmc import UnknownTaskError, split_task

    with pytest.raises(UnknownTaskError, match="env.task='cartpole_swing' is not a dm_control suite task; available: .*cartpole_swingup"):
        split_task("cartpole_swing")
