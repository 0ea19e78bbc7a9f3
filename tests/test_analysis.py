"""The latent analyses behind the notebooks, on hand-computed cases and a tiny real agent."""

import numpy as np
import pytest
import torch

from mlr_lightning.reporting import analysis
from mlr_lightning.agents.sac_mlr import SACMLRAgent
from mlr_lightning.config import load_config


def test_cosine_similarity_matrix_and_distance_profile():
    latents = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    m = analysis.cosine_similarity_matrix(latents)
    np.testing.assert_allclose(m, [[1, 0, -1], [0, 1, 0], [-1, 0, 1]], atol=1e-6)
    distances, mean = analysis.similarity_by_distance(m)
    np.testing.assert_allclose(distances, [0, 1, 2])
    np.testing.assert_allclose(mean, [1.0, 0.0, -1.0], atol=1e-6)


def test_masked_prediction_similarity_on_a_real_trajectory(tiny_overrides):
    torch.manual_seed(0)
    agent = SACMLRAgent(load_config(None, tiny_overrides), action_dim=1).eval()
    trajectory = analysis.collect_trajectory(agent, seed=0)
    assert trajectory["pixels"].shape[0] == 125 and trajectory["pixels"].dtype == torch.uint8
    result = analysis.masked_prediction_similarity(agent, trajectory)
    k, block = agent.mlr.seq_len, agent.mlr.block_size
    assert result["per_position"].shape == (k,)
    assert -1 <= result["masked"] <= 1 and -1 <= result["unmasked"] <= 1
    np.testing.assert_allclose(result["masked"], result["per_position"][:block].mean())
    latents = analysis.encode(agent, trajectory["pixels"])
    assert latents.shape == (125, agent.cfg.encoder.feature_dim)


def test_baseline_has_no_reconstruction_analysis(tiny_overrides):
    agent = SACMLRAgent(load_config(None, tiny_overrides + ["mlr.enabled=false"]), action_dim=1)
    with pytest.raises(ValueError, match="Baseline agent has no MLR decoder"):
        analysis.masked_prediction_similarity(agent, {"pixels": torch.zeros(8, 9, 24, 24, dtype=torch.uint8),
                                                      "action": torch.zeros(8, 1)})
