"""Rainbow + MLR agent pieces at tiny sizes: C51 projection, noise, MLR gradient paths, scores."""

import mlr_lightning  # noqa: F401

import pytest
import torch
from omegaconf import OmegaConf
from torchrl.envs.utils import ExplorationType, set_exploration_type

from mlr_lightning.agents.rainbow_mlr import RainbowMLRAgent, categorical_projection
from mlr_lightning.domains import load_config
from mlr_lightning.domains.atari import human_normalized_score

TINY_ATARI = ["domain=atari", "env.task=pong", "mlr.seq_len=4", "mlr.block_size=2", "mlr.decoder_dim=16",
              "rainbow.hidden_dim=32", "rainbow.num_atoms=11"]


@pytest.fixture(scope="module")
def agent():
    torch.manual_seed(0)
    cfg = load_config(None, TINY_ATARI)
    return RainbowMLRAgent(OmegaConf.to_container(cfg), num_actions=6)


SUPPORT = torch.tensor([-1.0, 0.0, 1.0])
NEXT = torch.tensor([0.2, 0.3, 0.5])


@pytest.mark.parametrize(
    "ret, discount, expected",
    [
        (0.5, 0.0, [0.0, 0.5, 0.5]),  # terminal: all mass at the return, split between 0 and 1
        (0.0, 1.0, [0.2, 0.3, 0.5]),  # identity
        (1.0, 1.0, [0.0, 0.2, 0.8]),  # upper edge: atoms shifted to 1 and 2 both land on 1
        (-2.0, 0.5, [1.0, 0.0, 0.0]),  # lower edge: everything clipped to -1
        (0.25, 0.5, [0.05, 0.5, 0.45]),  # shifted atoms -0.25, 0.25, 0.75 split between neighbours
    ],
)
def test_categorical_projection_hand_computed(ret, discount, expected):
    out = categorical_projection(NEXT[None], torch.tensor([ret]), torch.tensor([discount]), SUPPORT)
    torch.testing.assert_close(out[0], torch.tensor(expected))


def test_categorical_projection_preserves_mass_and_mean_inside_the_support():
    support = torch.linspace(-10, 10, 51)
    probs = torch.softmax(torch.randn(64, 51) * 0.3, -1)
    returns, discount = torch.rand(64) - 0.5, torch.full((64,), 0.99**10)
    probs[:, :3] = probs[:, -3:] = 0  # keep r + gamma z inside [-10, 10]
    probs /= probs.sum(-1, keepdim=True)
    out = categorical_projection(probs, returns, discount, support)
    torch.testing.assert_close(out.sum(-1), torch.ones(64))
    torch.testing.assert_close((out * support).sum(-1), returns + discount * (probs * support).sum(-1), atol=1e-4, rtol=0)


def test_noise_in_training_and_none_in_evaluation(agent):
    pixels = torch.randint(0, 255, (2, 4, 84, 84), dtype=torch.uint8)
    net = agent.online
    with torch.no_grad():
        with set_exploration_type(ExplorationType.RANDOM):  # collection and updates
            a = net(pixels)
            net.head.reset_noise()
            b = net(pixels)
        with set_exploration_type(ExplorationType.DETERMINISTIC):  # evaluation
            c = net(pixels)
            net.head.reset_noise()
            d = net(pixels)
    assert not torch.allclose(a, b)
    assert torch.equal(c, d)
    assert not torch.allclose(a, c)


def test_mlr_gradients_reach_the_q_heads_first_layer(agent):
    agent.zero_grad(set_to_none=True)
    frames = torch.randint(0, 255, (2, 4, 4, 84, 84), dtype=torch.uint8)
    actions = torch.nn.functional.one_hot(torch.randint(0, 6, (2, 4)), 6)
    with set_exploration_type(ExplorationType.RANDOM):
        loss, _ = agent.compute_mlr_loss(frames, actions, torch.ones(2))
    loss.backward()
    head = agent.online.head
    for layer in (head.value_hidden, head.advantage_hidden):
        assert layer.weight_mu.grad is not None and layer.weight_mu.grad.abs().sum() > 0
        assert layer.weight_sigma.grad is None  # the projection uses the mean weights only
    assert head.advantage_out.weight_mu.grad is None and head.value_out.weight_mu.grad is None
    assert agent.online.encoder.convs[0].weight.grad.abs().sum() > 0
    assert agent.decoder.action_embedding.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in agent.target_encoder.parameters())
    assert all(p.grad is None for p in agent.target_head.parameters())


def test_mlr_loss_is_importance_weighted(agent):
    frames = torch.randint(0, 255, (2, 4, 4, 84, 84), dtype=torch.uint8)
    actions = torch.nn.functional.one_hot(torch.randint(0, 6, (2, 4)), 6)
    torch.manual_seed(1)
    full, _ = agent.compute_mlr_loss(frames, actions, torch.ones(2))
    torch.manual_seed(1)
    zero, _ = agent.compute_mlr_loss(frames, actions, torch.zeros(2))
    assert full > 0 and zero == 0


def test_human_normalized_score():
    assert human_normalized_score("pong", -20.7) == 0.0
    assert human_normalized_score("pong", 14.6) == pytest.approx(1.0)
    assert human_normalized_score("breakout", 16.8) == pytest.approx((16.8 - 1.7) / (30.5 - 1.7))


def test_cli_prints_the_per_game_table(capsys):
    from mlr_lightning.cli import main

    assert main(["atari-table"]) == 0
    out = capsys.readouterr().out
    assert "| pong | -20.700 | 14.600 | -3.100 | 0.499 |" in out  # HNS of the paper's Baseline on Pong
    assert "| mean HNS |" in out and "0.679" in out  # the paper's MLR mean HNS over the 26 games


def test_mlr_targets_are_copied_after_the_loss(agent):
    """momentum_tau = 1: the targets use the online weights of the previous update, then copy the current ones."""
    frames = torch.randint(0, 255, (2, 4, 4, 84, 84), dtype=torch.uint8)
    actions = torch.nn.functional.one_hot(torch.randint(0, 6, (2, 4)), 6)
    with torch.no_grad():
        agent.online.encoder.convs[0].weight.add_(0.5)  # as an optimizer step would
    before = agent.target_encoder.convs[0].weight.clone()
    with set_exploration_type(ExplorationType.RANDOM):
        agent.compute_mlr_loss(frames, actions, torch.ones(2))
    assert not torch.equal(before, agent.online.encoder.convs[0].weight)
    assert torch.equal(agent.target_encoder.convs[0].weight, agent.online.encoder.convs[0].weight)
    assert torch.equal(agent.target_head.value_hidden.weight_mu, agent.online.head.value_hidden.weight_mu)
