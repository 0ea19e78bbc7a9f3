"""The third domain (domains/gym_pixels.py, Pendulum-v1 from drawn pixels): its environment, and the
commands users run on it: fit (through grid), sweep --dry-run and compare."""

import mlr_lightning  # noqa: F401

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from mlr_lightning.cli import main
from mlr_lightning.domains import DOMAINS, domain_of, load_config
from mlr_lightning.domains.gym_pixels import WORST_RETURN
from mlr_lightning.sweep.spec import expand, load_sweep

CONFIG = "conf/gym_pixels/pendulum.yaml"
# The tiny SAC+MLR agent of conftest.TINY_OVERRIDES, 80 agent steps (action repeat 2) of which 20 random.
TINY = ["env.image_size=24", "env.crop_size=20", "encoder.num_layers=2", "encoder.num_filters=8", "sac.hidden_dim=32",
        "mlr.patch_size=6", "mlr.seq_len=4", "mlr.block_size=2", "mlr.batch_size=3", "train.batch_size=8",
        "train.init_steps=20", "train.num_env_steps=160", "replay.capacity=1000", "eval.every_env_steps=80",
        "eval.num_episodes=1", "trainer.accelerator=cpu", "trainer.log_every_updates=5",
        "trainer.checkpoint_every_updates=20"]


def rollout(env, steps: int, seed: int = 0):
    """``steps`` agent steps with seeded random actions: the pixels and rewards."""
    generator = torch.Generator().manual_seed(seed)
    td, pixels, rewards = env.reset(), [], []
    for _ in range(steps):
        action = torch.rand(env.action_spec.shape, generator=generator) * 4 - 2
        stepped, td = env.step_and_maybe_reset(td.set("action", action))
        pixels.append(stepped["next", "pixels"])
        rewards.append(float(stepped["next", "reward"]))
    return torch.stack(pixels), rewards


def test_the_config_selects_the_domain_with_the_dmc_agent():
    cfg = load_config(CONFIG)
    domain = domain_of(cfg)
    assert domain is DOMAINS["gym_pixels"] and domain.agent_name == "sac"
    assert domain.env_steps_per_agent_step(cfg) == 2
    assert cfg.sac == load_config("conf/dmc/cartpole_swingup.yaml").sac  # the paper's SAC settings


def test_an_unknown_task_is_one_config_error(capsys):
    assert main(["fit", "--config", CONFIG, "env.task=CartPole-v1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("config error: env.task='CartPole-v1'") and "Pendulum-v1" in err and "\n" not in err


def test_frames_draw_the_angle_and_an_episode_restores_exactly():
    cfg = load_config(CONFIG, ["env.image_size=30", "env.crop_size=26"])
    env = domain_of(cfg).make_env(cfg, seed=3)
    assert env.observation_spec["pixels"].shape == (9, 30, 30)
    game = env.game
    env.reset()
    game.env.unwrapped.state = np.array([0.0, 0.0])  # upright: the rod is above the axle, red
    up = game.frame()
    game.env.unwrapped.state = np.array([np.pi, 0.0])  # hanging: below
    down = game.frame()
    assert tuple(up[4, 15]) == (204, 77, 77) and tuple(up[26, 15]) == (255, 255, 255)
    assert tuple(down[26, 15]) == (204, 77, 77) and tuple(down[4, 15]) == (255, 255, 255)
    assert tuple(up[15, 15]) == (0, 0, 0)  # the axle

    rollout(env, 30)
    saved = env.get_state()
    first = game_steps(game, 120)  # crosses the episode end at 100 agent steps: a reset draws from the RNG
    env.set_state(saved)
    again = game_steps(game, 120)
    assert torch.equal(first[0], again[0]) and first[1] == again[1]


def game_steps(game, steps: int):
    """Continue the simulator's episode (a new one after its end) with seeded random actions."""
    generator = torch.Generator().manual_seed(7)
    frames, rewards = [], []
    for _ in range(steps):
        frame, reward, terminated, truncated = game.step((torch.rand(1, generator=generator) * 4 - 2).numpy())
        frames.append(torch.from_numpy(frame.copy()))
        rewards.append(reward)
        if terminated or truncated:
            frames.append(torch.from_numpy(game.reset()))
    return torch.stack(frames), rewards


def test_seeded_environments_repeat_their_episodes():
    cfg = load_config(CONFIG, ["env.image_size=30", "env.crop_size=26"])
    a, b, c = (domain_of(cfg).make_env(cfg, seed=s) for s in (1, 1, 2))
    first, again, other = rollout(a, 60), rollout(b, 60), rollout(c, 60)
    assert torch.equal(first[0], again[0]) and first[1] == again[1]
    assert not torch.equal(first[0], other[0])
    assert all(WORST_RETURN / 100 <= r <= 0 for r in first[1])  # two simulator steps per agent step


def test_sweep_dry_run(tmp_path, capsys):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"experiment: pendulum\nconfigs: [{CONFIG}]\nseeds: [1, 2]\naxes:\n  mlr.enabled: [true, false]\n"
                     f"overrides:\n  output_dir: {tmp_path}\n")
    assert main(["sweep", "--config", str(sweep), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("4 trials = 1 configs x 2 seeds x 2 variants")
    assert f"| {CONFIG} | mlr.enabled=true seed=1 |" in printed
    plan = expand(*load_sweep(str(sweep), []))
    assert {t.final_agent_steps for t in plan.trials} == {100_000 // 2}  # the domain's x-axis unit
    assert not any(tmp_path.glob("pendulum*")), "a dry run creates nothing"


@pytest.mark.slow
def test_fit_and_compare(tmp_path, capsys):
    """MLR and its Baseline trained in the tiny configuration, then compared on the normalised score."""
    code = main(["grid", "--config", CONFIG, "--seeds", "1", "--vary", "mlr.enabled=true,false",
                 "--experiment", "pendulum", *TINY, f"output_dir={tmp_path}", "tracking.video=false"])
    assert code == 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("pendulum").experiment_id])
    assert sorted(r.data.tags["algorithm"] for r in runs) == ["sac", "sac_mlr"]
    assert {r.data.tags["domain"] for r in runs} == {"gym_pixels"}
    assert all(r.info.status == "FINISHED" and r.data.metrics["eval/return_mean"] < 0 for r in runs)
    capsys.readouterr()
    out = tmp_path / "compare"
    assert main(["compare", "--experiment", "pendulum", "--tracking-uri", uri, "--budgets", "160",
                 "--out", str(out), "--reps", "100"]) == 0
    printed = capsys.readouterr().out
    assert "Runs: 2 counted" in printed
    assert "| Pendulum-v1 | MLR | 160 | 1 | 1 |" in printed and "| Pendulum-v1 | Baseline | 160 | 1 | 1 |" in printed
    aggregate = (out / "aggregate_160.csv").read_text()
    assert "MLR" in aggregate and "Baseline" in aggregate
