"""SAC pieces that the official code gets right and a re-implementation easily gets wrong."""

import pytest
import torch

from mlr_lightning.agents.sac_mlr import SACMLRAgent, SACPolicy
from torchrl.envs.utils import ExplorationType, set_exploration_type


@pytest.fixture
def agent(tiny_cfg):
    torch.manual_seed(0)
    return SACMLRAgent(tiny_cfg, action_dim=1)


def obs(cfg, batch=4):
    return torch.randint(0, 256, (batch, 9, cfg.env.crop_size, cfg.env.crop_size), dtype=torch.uint8)


def test_td_target_bootstraps_through_truncation_and_stops_at_termination(agent, tiny_cfg):
    next_obs = obs(tiny_cfg)
    reward = torch.ones(4, 1)
    torch.manual_seed(1)
    running = agent.td_target(reward, next_obs, terminated=torch.zeros(4, 1, dtype=torch.bool))
    torch.manual_seed(1)
    terminal = agent.td_target(reward, next_obs, terminated=torch.ones(4, 1, dtype=torch.bool))
    torch.testing.assert_close(terminal, reward)
    torch.manual_seed(1)
    _, action, log_pi = agent.actor(next_obs)
    q1, q2 = agent.critic_target(next_obs, action)
    expected = reward + tiny_cfg.sac.discount * (torch.min(q1, q2) - agent.alpha * log_pi)
    torch.testing.assert_close(running, expected)


def test_actor_convs_are_the_critics_and_get_no_actor_gradient(agent, tiny_cfg):
    for a, c in zip(agent.actor.encoder.convs, agent.critic.encoder.convs):
        assert a.weight is c.weight and a.bias is c.bias
    assert agent.actor.encoder.fc is not agent.critic.encoder.fc
    _, pi, log_pi = agent.actor(obs(tiny_cfg), detach_conv=True)
    q1, _ = agent.critic(obs(tiny_cfg), pi, detach_conv=True)
    (log_pi.mean() - q1.mean()).backward()
    assert all(c.weight.grad is None for c in agent.critic.encoder.convs)
    assert agent.actor.encoder.fc.weight.grad is not None
    actor_opt = agent.configure_optimizers()[0][1]
    conv_ids = {id(p) for p in agent.critic.encoder.convs.parameters()}
    assert not conv_ids & {id(p) for g in actor_opt.param_groups for p in g["params"]}


def test_policy_samples_while_collecting_and_is_deterministic_in_evaluation(agent, tiny_cfg):
    policy = SACPolicy(agent.actor, tiny_cfg.env.crop_size)
    pixels = torch.randint(0, 256, (9, tiny_cfg.env.image_size, tiny_cfg.env.image_size), dtype=torch.uint8)
    with set_exploration_type(ExplorationType.RANDOM):
        samples = torch.stack([policy(pixels) for _ in range(5)])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        means = torch.stack([policy(pixels) for _ in range(5)])
    assert samples.shape == (5, 1) and samples.abs().le(1).all()
    assert samples.std() > 0
    assert all(torch.equal(mean, means[0]) for mean in means)  # std() of equal values can be 3e-8, not 0


def test_log_std_is_squashed_into_its_bounds(agent, tiny_cfg):
    with torch.no_grad():
        agent.actor.trunk[-1].bias.fill_(1e3)
    mu, pi, log_pi = agent.actor(obs(tiny_cfg))
    assert torch.isfinite(log_pi).all() and pi.abs().le(1).all()


@pytest.mark.parametrize("every_window, last_offset", [(True, 16), (False, 15)])
def test_rl_crop_offsets_cover_every_window_or_the_official_range(every_window, last_offset):
    """Pixel value = row (or column) index, so a crop's first pixel is its offset."""
    from mlr_lightning.data.augment import random_crop

    torch.manual_seed(0)
    rows = torch.arange(100, dtype=torch.uint8)[:, None].expand(100, 100)
    images = torch.stack([rows, rows.T])[None].expand(4000, 2, 100, 100)
    crops = random_crop(images, 84, every_window)
    tops, lefts = crops[:, 0, 0, 0], crops[:, 1, 0, 0]
    assert tops.min() == 0 and lefts.min() == 0
    assert tops.max() == last_offset and lefts.max() == last_offset
