"""The default MLR objective equals the one the suite shipped before the objective was consolidated.

``tests/data/mlr_default_objective.pt`` holds, per domain, the weights of a tiny agent, the loss of
one MLR forward pass on fixed frames and actions under a fixed seed, the gradient of every parameter
and the target networks after the pass. It was written by running this file as a script
(``python tests/test_mlr_default_equality.py``) on commit b565d6f, before the objective was
consolidated into ``mlr/objective.py``; the test recomputes everything with the current code and requires bit-for-bit
equality. Regenerate it only when the default objective is meant to change, and say why.
"""

import mlr_lightning  # noqa: F401

from pathlib import Path

import torch
from torchrl.envs.utils import ExplorationType, set_exploration_type

from mlr_lightning.agents.rainbow_mlr import RainbowMLRAgent
from mlr_lightning.agents.sac_mlr import SACMLRAgent
from mlr_lightning.domains import load_config

FIXTURE = Path(__file__).parent / "data" / "mlr_default_objective.pt"

DMC = ["env.task=cartpole_swingup", "env.action_repeat=8", "env.image_size=24", "env.crop_size=20",
       "encoder.num_layers=2", "encoder.num_filters=4", "encoder.feature_dim=16", "sac.hidden_dim=16",
       "mlr.patch_size=6", "mlr.seq_len=4", "mlr.block_size=2", "mlr.latent_dim=16"]
# The paper's 84-px frames and 12-px patches, a narrow network (4 * 7 * 7 = 196-d latents).
ATARI = ["domain=atari", "env.task=pong", "mlr.seq_len=4", "mlr.block_size=2", "mlr.decoder_dim=8",
         "rainbow.hidden_dim=8", "rainbow.num_atoms=11", "rainbow.conv_channels=[4,8,4]"]
ACTIONS = {"dmc": 2, "atari": 6}


def build(domain: str):
    """The agent and its MLR inputs: frames uint8 [B, K, C, H, W], actions [B, K, A] (and IS weights [B])."""
    gen = torch.Generator().manual_seed(7)
    if domain == "dmc":
        torch.manual_seed(0)
        cfg = load_config(None, DMC)
        agent = SACMLRAgent(cfg, ACTIONS[domain])
        frames = torch.randint(0, 256, (3, 4, 9, 24, 24), dtype=torch.uint8, generator=gen)
        actions = torch.rand(3, 4, 2, generator=gen) * 2 - 1
        return agent, (frames, actions)
    torch.manual_seed(0)
    cfg = load_config(None, ATARI)
    agent = RainbowMLRAgent(cfg, num_actions=ACTIONS[domain])
    frames = torch.randint(0, 256, (3, 4, 4, 84, 84), dtype=torch.uint8, generator=gen)
    actions = torch.nn.functional.one_hot(torch.randint(0, 6, (3, 4), generator=gen), 6)
    weight = torch.rand(3, generator=gen) + 0.5
    return agent, (frames, actions, weight)


def mlr_pass(domain: str, weights: dict | None = None) -> dict:
    """Loss, gradients and the targets after one MLR forward/backward pass, draws seeded with 123."""
    agent, inputs = build(domain)
    if weights is not None:
        agent.load_state_dict(weights)  # strict: the checkpoint keys of the default path are unchanged
    state = {k: v.clone() for k, v in agent.state_dict().items()}
    torch.manual_seed(123)
    with set_exploration_type(ExplorationType.RANDOM):
        loss = agent.compute_mlr_loss(*inputs)
    loss = loss[0] if isinstance(loss, tuple) else loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in agent.named_parameters() if p.grad is not None}
    after = {k: v.clone() for k, v in agent.state_dict().items() if k.startswith("target_")}
    return {"weights": state, "loss": loss.detach(), "grads": grads, "targets_after": after}


def test_default_objective_is_unchanged_in_both_domains():
    expected = torch.load(FIXTURE, weights_only=True)
    for domain in ("dmc", "atari"):
        want = expected[domain]
        got = mlr_pass(domain, want["weights"])
        assert torch.equal(got["loss"], want["loss"]), f"{domain}: loss {got['loss']} != {want['loss']}"
        assert got["grads"].keys() == want["grads"].keys(), f"{domain}: other parameters get gradients"
        for name, grad in want["grads"].items():
            assert torch.equal(got["grads"][name], grad), f"{domain}: gradient of {name} changed"
        for name, value in want["targets_after"].items():
            assert torch.equal(got["targets_after"][name], value), f"{domain}: target {name} after the pass changed"


if __name__ == "__main__":
    FIXTURE.parent.mkdir(exist_ok=True)
    torch.save({domain: mlr_pass(domain) for domain in ("dmc", "atari")}, FIXTURE)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")
