"""The Atari environment on real ROMs: the Rainbow/SPR protocol and every Atari-100k game."""

import mlr_lightning  # noqa: F401  (torch/tensordict/torchrl first: see the package docstring)

from pathlib import Path

import pytest
import torch

from mlr_lightning.domains import load_config
from mlr_lightning.envs.atari import UnknownGameError, available_games, check_game, make_atari_env
from mlr_lightning.domains.atari import REFERENCE as ATARI_REFERENCE

CONF = Path(__file__).resolve().parents[1] / "conf" / "atari"


def env_for(game, train, seed=0, **kwargs):
    return make_atari_env(game, 4, 84, 4, 30, 0.0, 108_000, train=train, seed=seed, **kwargs)


def lives(env):
    return env.game.unwrapped.ale.lives()


def test_observation_and_action_specs():
    env = env_for("pong", train=True)
    td = env.reset()
    assert td["pixels"].shape == (4, 84, 84) and td["pixels"].dtype == torch.uint8
    assert env.action_spec.shape == (6,)  # Pong's minimal action set, one-hot
    rollout = env.rollout(8)
    # After a reset the stack repeats the first frame; later slots are consecutive frames.
    assert torch.equal(rollout["next", "pixels"][0, :3], rollout["pixels"][0, 1:])


def test_life_loss_terminates_training_episodes_only():
    train = env_for("breakout", train=True)
    train.reset()
    rollout = train.rollout(3000, break_when_any_done=True)
    assert rollout["next", "terminated"][-1].item()
    assert 0 < lives(train) < 5  # a life was lost, the game is not over
    train.reset()
    assert 0 < lives(train) < 5  # the next training episode continues the same game

    evaluation = env_for("breakout", train=False)
    evaluation.reset()
    start = lives(evaluation)
    rollout = evaluation.rollout(len(rollout) + 200, break_when_any_done=True)
    assert lives(evaluation) < start and not rollout["next", "done"][:-1].any()


def test_reward_clipping_in_training_only():
    torch.manual_seed(0)
    train = env_for("alien", train=True, seed=1)
    rollout = train.rollout(150)
    rewards = rollout["next", "reward"]
    assert set(rewards.unique().tolist()) <= {0.0, 1.0} and rewards.sum() > 0
    assert rollout["next", "episode_reward"].max() >= 10  # the raw score is still summed (alien dots: 10)
    evaluation = env_for("alien", train=False, seed=1)
    assert evaluation.rollout(150)["next", "reward"].max() >= 10


def test_unknown_game_lists_the_available_ones():
    with pytest.raises(UnknownGameError, match="available: .*ms_pacman.*pong"):
        check_game("pacman_3000")
    assert set(ATARI_REFERENCE) <= set(available_games())


@pytest.mark.parametrize("game", sorted(ATARI_REFERENCE))
def test_every_atari100k_game_config_builds_and_steps(game):
    cfg = load_config(CONF / f"{game}.yaml")
    assert cfg.domain == "atari" and cfg.env.task == game and cfg.train.num_env_steps == 100_000
    env = env_for(game, train=True)
    rollout = env.rollout(5)
    assert rollout["pixels"].shape == (5, 4, 84, 84)


def test_atari_config_errors_name_the_key():
    from mlr_lightning.config import ConfigError

    with pytest.raises(ConfigError, match="unknown config key 'rainbow.atoms'.*num_atoms"):
        load_config(CONF / "pong.yaml", ["rainbow.atoms=3"])
    with pytest.raises(ConfigError, match="mlr.seq_len .*block_size"):
        load_config(CONF / "pong.yaml", ["mlr.seq_len=12"])
    with pytest.raises(ConfigError, match="missing value for env.task"):
        load_config(None, ["domain=atari"])


def test_game_configs_set_only_the_game_and_print_config_shows_every_paper_default(capsys):
    from omegaconf import OmegaConf

    from mlr_lightning.cli import main
    from mlr_lightning.domains.atari import AtariExperimentConfig

    for path in CONF.glob("*.yaml"):
        if path.stem not in ("quickstart", "official"):
            assert OmegaConf.to_container(OmegaConf.load(path)) == {"domain": "atari", "env": {"task": path.stem}}
    assert main(["fit", "--config", str(CONF / "pong.yaml"), "--print-config"]) == 0
    printed = OmegaConf.create(capsys.readouterr().out)
    expected = OmegaConf.merge(OmegaConf.structured(AtariExperimentConfig), {"env": {"task": "pong"}})
    assert OmegaConf.to_container(printed) == OmegaConf.to_container(expected)
    quick = load_config(CONF / "quickstart.yaml")
    assert quick.rainbow == OmegaConf.structured(AtariExperimentConfig).rainbow  # the quickstart keeps the paper's agent


def test_resize_is_the_official_bilinear_one_by_default():
    linear, area = env_for("pong", train=False, seed=3), env_for("pong", train=False, seed=3, resize="area")
    a, b = linear.reset()["pixels"].float(), area.reset()["pixels"].float()
    assert not torch.equal(a, b) and (a - b).abs().mean() < 5  # same screen, another interpolation
    assert load_config(CONF / "pong.yaml").env.resize == "linear"
