"""The MLR objective: loss form, decoder, gradient flow, moving averages, mask-before-crop."""

import copy
import math

import pytest
import torch

from mlr_lightning.agents.sac_mlr import SACMLRAgent
from mlr_lightning.domains import load_config
from mlr_lightning.mlr.decoder import PredictiveLatentDecoder
from mlr_lightning.mlr.objective import latent_loss
from mlr_lightning.mlr.warmup import inverse_sqrt_schedule
from mlr_lightning.models.weights import soft_update

ACTION_DIM = 2


@pytest.fixture
def agent(tiny_cfg):
    torch.manual_seed(0)
    return SACMLRAgent(tiny_cfg, ACTION_DIM)


def window(cfg, batch=3):
    e = cfg.env
    frames = torch.randint(1, 256, (batch, cfg.mlr.seq_len, 3 * e.frame_stack, e.image_size, e.image_size), dtype=torch.uint8)
    return frames, torch.rand(batch, cfg.mlr.seq_len, ACTION_DIM) * 2 - 1


def test_loss_is_two_minus_two_cosine_and_zero_for_identical_inputs():
    a, b = torch.randn(7, 50), torch.randn(7, 50)
    expected = 2 - 2 * torch.nn.functional.cosine_similarity(a, b, dim=-1)
    torch.testing.assert_close(latent_loss(a, b, "cosine", eps=1e-3), expected)
    torch.testing.assert_close(latent_loss(a, 3 * a, "cosine", eps=1e-3), torch.zeros(7), atol=1e-6, rtol=0)
    torch.testing.assert_close(latent_loss(a, -a, "cosine", eps=1e-3), torch.full((7,), 4.0))


def test_mse_loss_is_the_mean_squared_error_of_the_projections():
    a, b = torch.randn(7, 50), torch.randn(7, 50)
    torch.testing.assert_close(latent_loss(a, b, "mse", eps=1e-3), ((a - b) ** 2).mean(-1))
    # Unlike the cosine, it sees the scale: a prediction three times the target is penalised.
    assert (latent_loss(a, 3 * a, "mse", eps=1e-3) > 0).all()


def test_action_tokens_change_the_prediction():
    torch.manual_seed(0)
    decoder = PredictiveLatentDecoder(dim=50, action_dim=3, num_layers=2, num_heads=1, mlp_ratio=2.0, max_len=128)
    states = torch.randn(2, 16, 50)
    out_a = decoder(states, torch.zeros(2, 16, 3))
    out_b = decoder(states, torch.ones(2, 16, 3))
    assert out_a.shape == (2, 16, 50)
    assert not torch.allclose(out_a, out_b)
    # Changing one step's action changes every position's output (bidirectional attention).
    actions = torch.zeros(2, 16, 3)
    actions[:, 5] = 1
    assert (decoder(states, actions) - out_a).abs().sum(-1).gt(0).all()


def test_positions_distinguish_time_steps():
    decoder = PredictiveLatentDecoder(dim=50, action_dim=3, num_layers=2, num_heads=1, mlp_ratio=2.0, max_len=128)
    same = torch.randn(1, 1, 50).expand(1, 8, 50)
    out = decoder(same, torch.zeros(1, 8, 3))
    assert not torch.allclose(out[:, 0], out[:, 1])


def test_gradients_reach_online_networks_and_never_targets(agent, tiny_cfg):
    frames, actions = window(tiny_cfg)
    loss = agent.compute_mlr_loss(frames, actions)
    loss.backward()
    for name, module in [("encoder", agent.critic.encoder), ("decoder", agent.decoder),
                         ("action embedding", agent.decoder.action_embedding),
                         ("projection", agent.projection), ("prediction", agent.prediction)]:
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), f"no gradient reaches the {name}"
        assert sum(g.abs().sum() for g in grads) > 0, f"zero gradient in the {name}"
    for module in (agent.target_encoder, agent.target_projection, agent.critic_target):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())


def test_targets_start_as_copies_and_official_init_reproduces_the_quirk(tiny_overrides):
    torch.manual_seed(0)
    ours = SACMLRAgent(load_config(None, tiny_overrides), ACTION_DIM)
    assert torch.equal(ours.target_encoder.fc.weight, ours.critic.encoder.fc.weight)
    assert torch.equal(ours.target_projection[0].weight, ours.projection[0].weight)
    assert torch.equal(ours.critic_target.encoder.fc.weight, ours.critic.encoder.fc.weight)
    official = SACMLRAgent(load_config(None, tiny_overrides + ["mlr.official_init=true"]), ACTION_DIM)
    assert not torch.equal(official.target_projection[0].weight, official.projection[0].weight)
    assert not torch.equal(official.target_encoder.fc.weight, official.critic.encoder.fc.weight)
    assert not torch.equal(official.critic_target.encoder.fc.weight, official.critic.encoder.fc.weight)
    assert official.critic.encoder.fc.weight.abs().max() <= official.cfg.mlr.init_std  # re-initialised


def test_moving_averages_follow_their_formula(agent, tiny_cfg):
    with torch.no_grad():
        for p in agent.parameters():
            p.add_(torch.randn_like(p))
    old = copy.deepcopy(agent)
    agent.update_targets()
    cfg = tiny_cfg
    pairs = [
        (agent.critic_target.q1, agent.critic.q1, old.critic_target.q1, cfg.sac.critic_tau),
        (agent.critic_target.encoder, agent.critic.encoder, old.critic_target.encoder, cfg.sac.encoder_tau),
        (agent.target_encoder, agent.critic.encoder, old.target_encoder, cfg.mlr.momentum_tau),
        (agent.target_projection, agent.projection, old.target_projection, cfg.mlr.momentum_tau),
    ]
    for target, online, target_before, tau in pairs:
        for t, o, t0 in zip(target.parameters(), online.parameters(), target_before.parameters()):
            torch.testing.assert_close(t, tau * o + (1 - tau) * t0)


def test_soft_update_with_tau_one_copies():
    a, b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    soft_update(a, b, 1.0)
    assert torch.equal(a.weight, b.weight)


def test_mask_is_applied_before_the_crop(agent, tiny_cfg):
    """Online views are crops of frames masked on the full-size patch grid, each at its own offset."""
    cfg = tiny_cfg
    agent.mlr.intensity_scale = 0.0  # isolate geometry from the intensity augmentation
    frames = torch.full((4, cfg.mlr.seq_len, 9, cfg.env.image_size, cfg.env.image_size), 255, dtype=torch.uint8)
    objective = agent.objective
    mask = objective.mask(frames)
    masked, _ = objective.masked_input(frames, mask)
    online, target = objective.parts.augment(masked.flatten(0, 1)), objective.parts.augment(frames.flatten(0, 1))
    assert (target == 255).all(), "the target branch must see unmasked frames"
    crop, size = cfg.env.crop_size, cfg.env.image_size
    full = mask[:, 0].repeat(4, 1, 1)  # [B*K, H, W]: the same mask for every sample
    zero = online[:, 0] == 0  # [B*K, crop, crop]
    offsets = set()
    for i in range(zero.shape[0]):
        found = [(dy, dx) for dy in range(size - crop + 1) for dx in range(size - crop + 1)
                 if torch.equal(full[i, dy : dy + crop, dx : dx + crop], zero[i])]
        assert found, f"view {i} is not a crop of the full-resolution mask"
        offsets.add(found[0])
    assert len(offsets) > 1, "all views share one crop: augmentation is not drawn per image"


def test_inverse_sqrt_schedule():
    f = inverse_sqrt_schedule(6000, 5e-4)
    assert f(0) == pytest.approx(5e-4)
    assert f(3000) == pytest.approx(5e-4 + (1 - 5e-4) / 2)
    assert f(6000) == pytest.approx(1.0)
    assert f(24000) == pytest.approx(0.5)
    assert math.isclose(f(6000 * 4), math.sqrt(1 / 4))


def test_baseline_builds_nothing_of_mlr(tiny_overrides):
    agent = SACMLRAgent(load_config(None, tiny_overrides + ["mlr.enabled=false"]), ACTION_DIM)
    assert not hasattr(agent, "decoder") and not hasattr(agent, "target_encoder")
    assert len(agent.configure_optimizers()) == 3
