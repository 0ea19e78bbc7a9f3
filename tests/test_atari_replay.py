"""Prioritized n-step replay: returns across episode ends, padded windows, priorities from the loss,
and one end-to-end ``fit`` on a real game."""

import mlr_lightning  # noqa: F401

import csv
import math

import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from mlr_lightning.agents.rainbow_mlr import RainbowMLRAgent
from mlr_lightning.cli import main
from mlr_lightning.domains import load_config
from mlr_lightning.data.frames import assemble_stacks
from mlr_lightning.data.prioritized import PrioritizedReplay
from mlr_lightning.data.stream import ExperienceStream, make_collector
from mlr_lightning.domains.atari import ATARI
from mlr_lightning.domains.atari import PriorityUpdate
from tensordict.nn import TensorDictModule


def episode(rewards, last, traj, terminated=True):
    """Collector-shaped steps of one episode (ending at its last step when ``last``); pixel value = step."""
    t = len(rewards)
    done = torch.zeros(t, 1, dtype=torch.bool)
    done[-1] = last
    return TensorDict({
        "pixels": torch.arange(t, dtype=torch.uint8)[:, None, None, None].expand(t, 2, 3, 3).clone(),
        "action": torch.nn.functional.one_hot(torch.arange(t) % 3, 3),
        "step_count": torch.arange(t)[:, None],
        "collector": {"traj_ids": torch.full((t,), traj)},
        "next": {"reward": torch.tensor(rewards, dtype=torch.float)[:, None], "done": done,
                 "terminated": done & terminated, "pixels": torch.full((t, 2, 3, 3), 99, dtype=torch.uint8),
                 "step_count": torch.arange(1, t + 1)[:, None]},
    }, batch_size=[t])


def store(replay, steps):
    replay.extend(steps, steps["collector", "traj_ids"])


def by_row(batch):
    """Start row -> its RL fields and, as ``window_pixels``/``window_action``, its MLR window."""
    rows = {}
    for j, i in enumerate(batch["rl", "index"].tolist()):
        rows[i] = {k: batch["rl", k][j] for k in batch["rl"].keys()}
        if "mlr" in batch.keys():
            rows[i] |= {"window_pixels": batch["mlr", "pixels"][j], "window_action": batch["mlr", "action"][j]}
    return rows


def test_n_step_returns_and_windows_across_episode_ends():
    replay = PrioritizedReplay(100, 2, 4, n_step=3, discount=0.5, alpha=0.5, priority_eps=1e-6, batch_size=256,
                               beta_start=0.4, beta_end=0.4, windows=True)
    store(replay, episode([1.0, 2.0, 3.0, 4.0], True, 0))  # rows 0-3, final observation row 4 (terminated)
    store(replay, episode([1.0, 1.0], True, 1, terminated=False))  # rows 5-6 (truncated), final row 7
    store(replay, episode([1.0, 1.0, 1.0, 1.0, 1.0], False, 2))  # rows 8-12, still running
    rows = by_row(assemble_stacks(replay.sample(progress=0.0)))
    # Start rows whose 3-step future is not written yet (10-12) and final observations are never drawn.
    assert set(rows) == {0, 1, 2, 3, 5, 6, 8, 9}
    assert rows[0]["return"] == 1 + 0.5 * 2 + 0.25 * 3 and rows[0]["discount"] == 0.125
    assert rows[0]["next_pixels"][:, 0, 0].tolist() == [2, 3]  # the stack of row 3
    assert rows[1]["return"] == 2 + 0.5 * 3 + 0.25 * 4 and rows[1]["discount"] == 0  # terminated at step 3
    assert rows[3]["return"] == 4 and rows[3]["discount"] == 0
    # Truncation: bootstrap from the final observation after 2 steps, with gamma^2.
    assert rows[5]["return"] == 1.5 and rows[5]["discount"] == 0.25
    assert rows[5]["next_pixels"][:, 0, 0].tolist() == [1, 99]
    assert rows[9]["return"] == 1.75 and rows[9]["discount"] == 0.125
    # Windows (K=4) past the episode's end repeat its last step, frames and action.
    assert rows[1]["window_pixels"][:, -1, 0, 0].tolist() == [1, 2, 3, 3]
    assert rows[1]["window_action"].argmax(-1).tolist() == [1, 2, 0, 0]
    assert rows[8]["window_pixels"][:, -1, 0, 0].tolist() == [0, 1, 2, 3]
    assert all(0 < row["weight"] <= 1 for row in rows.values())


def test_priorities_follow_the_loss(tmp_path):
    torch.manual_seed(0)
    cfg = load_config(None, ["domain=atari", "env.task=pong", "mlr.enabled=false", "rainbow.n_step=3",
                             "rainbow.hidden_dim=32", "replay.capacity=500", "train.batch_size=8"])
    env = ATARI.make_env(cfg, 0, train=True)
    agent = RainbowMLRAgent(OmegaConf.to_container(cfg), num_actions=env.action_spec.shape[-1])
    replay = ATARI.make_replay(cfg)
    policy = TensorDictModule(agent.policy, in_keys=["pixels"], out_keys=["action"])
    stream = ExperienceStream(lambda start, restarts, writer: make_collector(env, policy, writer, 40 - start, 40, "cpu"), replay,
                              total_agent_steps=40, init_steps=20, updates_per_step=1, env_steps_per_agent_step=1,
                              max_env_restarts=0)
    batch = assemble_stacks(next(iter(stream)))
    stream.close()
    sample = batch["rl"]
    assert torch.allclose(torch.as_tensor(replay.sampler._sum_tree[sample["index"].tolist()]), torch.tensor(1.0))
    with set_exploration_type(ExplorationType.RANDOM):
        loss, priority, _ = agent.q_loss(sample)
    assert loss.isfinite() and (priority > 0).all()
    PriorityUpdate(replay).on_train_batch_end(None, agent, {"index": sample["index"], "priority": priority}, batch, 0)
    stored = torch.as_tensor(replay.sampler._sum_tree[sample["index"].tolist()])
    # Duplicated indices keep the last write; compare on unique ones.
    last = {i: p for i, p in zip(sample["index"].tolist(), priority.tolist())}
    expected = torch.tensor([(last[i] + cfg.replay.priority_eps) ** cfg.replay.alpha for i in sample["index"].tolist()])
    torch.testing.assert_close(stored, expected)
    assert batch["beta"] == 0.4 + 0.6 * 20 / 40  # beta follows the agent-step counter
    # The priorities survive the snapshot's round trip through a file with the rows.
    torch.save(replay.state_dict(), tmp_path / "replay.pt")
    fresh = ATARI.make_replay(cfg)
    fresh.load_state_dict(torch.load(tmp_path / "replay.pt", weights_only=False))
    rows = list(range(len(replay)))
    torch.testing.assert_close(torch.as_tensor(fresh.sampler._sum_tree[rows]), torch.as_tensor(replay.sampler._sum_tree[rows]))


@pytest.mark.slow
def test_fit_on_a_real_game_writes_a_checkpoint_with_finite_losses(tmp_path, one_thread):
    code = main(["fit", "--config", "conf/atari/pong.yaml", "train.num_env_steps=45", "train.init_steps=30",
                 "train.batch_size=4", "mlr.seq_len=4", "mlr.block_size=2", "mlr.decoder_dim=32",
                 "rainbow.hidden_dim=32", "rainbow.n_step=3", "replay.capacity=500", "eval.num_episodes=2",
                 "eval.max_steps=20", "trainer.accelerator=cpu", "trainer.log_every_updates=5",
                 "trainer.checkpoint_every_updates=20", "tracking.mlflow=false", f"output_dir={tmp_path}"])
    assert code == 0
    (run_dir,) = tmp_path.iterdir()
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert int(ckpt["state_dict"]["num_updates"]) == (45 - 30) * 2
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    for key in ("train/q_loss", "train/mlr_loss"):
        values = [float(r[key]) for r in rows if r.get(key)]
        assert values and all(math.isfinite(v) for v in values)
    final = [r for r in rows if r.get("eval/hns")]
    assert len(final) == 1 and float(final[0]["step"]) == 45  # one evaluation, at the end


@pytest.mark.parametrize("official", [False, True])
def test_n_step_targets_near_a_termination_under_both_settings(official):
    """A life lost at row k = 11: rows k-9..k have their terminal 10..1 steps ahead. Ours stops the
    bootstrap; the pinned rlpyt's (official) only does so for a terminal at the first step and otherwise
    bootstraps from the last state before the terminal with gamma^n."""
    replay = PrioritizedReplay(100, 2, 1, n_step=10, discount=0.5, alpha=0.5, priority_eps=1e-6, batch_size=1024,
                               beta_start=1.0, beta_end=1.0, windows=False, official_nstep_bootstrap=official)
    store(replay, episode([1.0] * 12, True, 0))  # rows 0-11, the terminal at row 11, final observation row 12
    store(replay, episode([1.0] * 12, False, 1))  # rows 13-24, running
    rows = by_row(assemble_stacks(replay.sample(progress=0.0)))
    k = 11
    for i in range(k - 9, k + 1):
        m = k - i + 1  # steps up to and including the terminal
        row = rows[i]
        assert row["return"] == pytest.approx(sum(0.5**j for j in range(m)))
        if official and m > 1:
            assert row["discount"] == pytest.approx(0.5**10)
            assert row["next_pixels"][:, 0, 0].tolist() == [k - 1, k], "not the last state before the terminal"
        else:
            assert row["discount"] == 0


@pytest.mark.parametrize("new_priority, expected", [(None, 5.0), (1.0, 1.0)])
def test_new_rows_get_the_running_maximum_or_a_fixed_priority(new_priority, expected):
    replay = PrioritizedReplay(100, 2, 1, n_step=1, discount=0.5, alpha=0.5, priority_eps=0.0, batch_size=4,
                               beta_start=1.0, beta_end=1.0, windows=False, new_priority=new_priority)
    store(replay, episode([1.0] * 3, False, 0))
    replay.update_priority(torch.tensor([0]), torch.tensor([5.0]))  # the running maximum is now 5
    store(replay, episode([1.0] * 3, False, 0)[:2])  # rows 3-4
    stored = torch.as_tensor(replay.sampler._sum_tree[[3, 4]])
    torch.testing.assert_close(stored, torch.full((2,), expected**0.5))
