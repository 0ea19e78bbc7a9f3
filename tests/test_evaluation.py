"""Evaluation is a function of the weights and the evaluation point: the same returns on any number
of environments stepped together, and nothing drawn from the generator that training draws from."""

import pytest
import torch

from mlr_lightning.domains import domain_of, load_config
from mlr_lightning.training.evaluation import evaluate


def agent_and_envs(config: str | None, overrides: list[str], num_envs: int):
    cfg = load_config(config, overrides)
    domain = domain_of(cfg)
    torch.manual_seed(0)  # the same untrained weights each time
    envs = [domain.make_env(cfg, cfg.seed + cfg.eval.seed_offset, train=False) for _ in range(num_envs)]
    return domain.make_agent(cfg, envs[0]), envs


@pytest.mark.parametrize("domain", ["dmc", "atari"])
def test_returns_are_the_same_on_one_or_five_environments_and_training_draws_are_untouched(
        domain, tiny_base_overrides, tiny_atari_base_overrides):
    # Atari: a high evaluation epsilon so that the per-episode draws decide actions; Boxing scores within 100 steps.
    config, overrides = ((None, tiny_base_overrides) if domain == "dmc" else
                         ("conf/atari/quickstart.yaml", tiny_atari_base_overrides + ["env.task=boxing", "rainbow.eval_epsilon=0.5", "eval.max_steps=100"]))
    returns = {}
    for num_envs in (1, 5):
        agent, envs = agent_and_envs(config, overrides, num_envs)
        torch.manual_seed(123)
        before = torch.get_rng_state()
        returns[num_envs] = evaluate(envs, agent.policy, seed=7, env_steps=160, num_episodes=7)
        assert torch.equal(torch.get_rng_state(), before), "the evaluation moved torch's global generator"
    if domain == "atari":  # discrete actions: the batched network's last-bit differences change no argmax
        assert returns[5] == returns[1]
    else:  # continuous actions: batched float kernels round differently in the last bits (189.44153 vs 189.44145)
        assert returns[5] == pytest.approx(returns[1], rel=1e-5)
    assert len(set(returns[1])) > 1, "the episodes should start from different states"
    agent, envs = agent_and_envs(config, overrides, 1)
    other_point = evaluate(envs, agent.policy, seed=7, env_steps=320, num_episodes=7)
    assert other_point != returns[1], "another evaluation point plays other episodes"
