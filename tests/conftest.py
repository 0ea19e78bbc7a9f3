"""Shared fixtures: tiny but real configurations (real dm_control rendering, real Lightning)."""

import mlr_lightning  # noqa: F401  (torch/tensordict/torchrl before dm_control: see the package docstring)

import pytest

from mlr_lightning.config import load_config

# A real cartpole_swingup agent shrunk to run in seconds on 2 CPU cores: 24x24 renders cropped to
# 20, a 4x4 grid of 6-px mask patches, a 2-layer encoder with 8 filters.
TINY_OVERRIDES = [
    "env.task=cartpole_swingup",
    "env.action_repeat=8",
    "env.image_size=24",
    "env.crop_size=20",
    "env.fast_render=true",
    "encoder.num_layers=2",
    "encoder.num_filters=8",
    "sac.hidden_dim=32",
    "mlr.patch_size=6",
    "mlr.seq_len=4",
    "mlr.block_size=2",
    "mlr.batch_size=3",
    "train.batch_size=8",
    "train.init_steps=20",
    "train.num_env_steps=320",
    "replay.capacity=1000",
    "eval.every_env_steps=160",
    "eval.num_episodes=1",
    "trainer.accelerator=cpu",
    "trainer.log_every_updates=5",
    "trainer.checkpoint_every_updates=10",
]


@pytest.fixture
def tiny_overrides(tmp_path):
    return TINY_OVERRIDES + [f"output_dir={tmp_path / 'runs'}"]


@pytest.fixture
def tiny_cfg(tiny_overrides):
    return load_config(None, tiny_overrides)


@pytest.fixture(scope="session")
def tiny_experiment(tmp_path_factory):
    """A real MLflow experiment made by the CLI's ``grid``: MLR on/off x 2 seeds of the tiny agent."""
    from mlr_lightning.cli import main

    out = tmp_path_factory.mktemp("experiment")
    code = main(["grid", "--config", "conf/quickstart.yaml", "--seeds", "1", "2", "--vary", "mlr.enabled=true,false",
                 "--experiment", "tiny", *TINY_OVERRIDES, f"output_dir={out}", "tracking.video=false"])
    assert code == 0
    return {"output_dir": out, "uri": f"sqlite:///{out / 'mlflow.db'}", "experiment": "tiny"}
