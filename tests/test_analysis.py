"""The latent analyses behind the notebooks: hand-computed cases, a tiny real agent, a trained agent
against untrained ones, and an Atari run."""

import numpy as np
import pytest
import torch

from mlr_lightning.reporting import analysis
from mlr_lightning.agents.rainbow_mlr import RainbowMLRAgent
from mlr_lightning.agents.sac_mlr import SACMLRAgent
from mlr_lightning.domains import load_config


def test_cosine_similarity_is_taken_on_centred_latents():
    # A large shared component (10, 0, 0) makes every raw cosine about 0.99; centred, the deviations
    # (0,0,1), (0,0,-1), (0,1,0), (0,-1,0) are opposite or orthogonal.
    latents = torch.tensor([[10.0, 0, 1], [10, 0, -1], [10, 1, 0], [10, -1, 0]])
    raw = analysis.cosine_similarity_matrix(latents, centred=False)
    assert raw.min() > 0.98
    m = analysis.cosine_similarity_matrix(latents)
    np.testing.assert_allclose(m, [[1, -1, 0, 0], [-1, 1, 0, 0], [0, 0, 1, -1], [0, 0, -1, 1]], atol=1e-6)
    distances, mean = analysis.similarity_by_distance(m)
    np.testing.assert_allclose(distances, [0, 1, 2, 3])
    np.testing.assert_allclose(mean, [1.0, -2 / 3, 0.0, 0.0], atol=1e-6)
    assert analysis.shuffled_pairs(m) == pytest.approx(-4 / 12)  # the off-diagonal mean: four -1 among 12 pairs


def test_effective_dimensions_from_a_line_to_isotropic():
    line = torch.tensor([[1.0, 2.0, 3.0]]) * torch.linspace(-1, 1, 9)[:, None] + 5.0
    assert analysis.effective_dimensions(line) == pytest.approx(1.0)
    isotropic = torch.cat([torch.eye(3), -torch.eye(3)]) + 5.0
    assert analysis.effective_dimensions(isotropic) == pytest.approx(3.0)


def test_shuffled_partners_never_overlap_their_window():
    starts = np.arange(0, 40)
    partners = analysis._non_overlapping_partners(starts, k=8, seed=0).numpy()
    assert (np.abs(starts - starts[partners]) >= 8).all()


def test_similarity_matrices_share_a_colour_scale_set_by_the_data():
    a = np.array([[1.0, 0.2], [0.2, 1.0]])
    b = np.array([[1.0, -0.05], [-0.05, 1.0]])
    fig = analysis.plot_similarity_matrices({"a": a, "b": b})
    assert [ax.images[0].get_clim() for ax in fig.axes if ax.images] == [(-0.2, 0.2), (-0.2, 0.2)]


def test_masked_prediction_similarity_on_a_real_trajectory(tiny_overrides, one_thread):
    torch.manual_seed(0)
    agent = SACMLRAgent(load_config(None, tiny_overrides), action_dim=1).eval()
    trajectory = analysis.collect_trajectory(agent, seed=0)
    assert trajectory["pixels"].shape[0] == 125 and trajectory["pixels"].dtype == torch.uint8
    result = analysis.masked_prediction_similarity(agent, trajectory)
    k, block = agent.mlr.seq_len, agent.mlr.block_size
    assert result["per_position"].shape == (k,) and result["windows"] == 125 - k + 1
    for key in ("masked", "unmasked", "shuffled_masked", "shuffled_unmasked", "raw_masked", "raw_unmasked"):
        assert -1 <= result[key] <= 1, key
    np.testing.assert_allclose(result["masked"], result["per_position"][:block].mean(), rtol=1e-6)
    latents = analysis.encode(agent, trajectory["pixels"])
    assert latents.shape == (125, agent.cfg.encoder.feature_dim)
    short = {"pixels": trajectory["pixels"][:7], "action": trajectory["action"][:7]}
    with pytest.raises(ValueError, match="shorter than two windows"):
        analysis.masked_prediction_similarity(agent, short)


def test_baseline_has_no_reconstruction_analysis(tiny_overrides):
    agent = SACMLRAgent(load_config(None, tiny_overrides + ["mlr.enabled=false"]), action_dim=1)
    with pytest.raises(ValueError, match="Baseline agent has no MLR decoder"):
        analysis.masked_prediction_similarity(agent, {"pixels": torch.zeros(8, 9, 24, 24, dtype=torch.uint8),
                                                      "action": torch.zeros(8, 1)})


def test_untrained_reference_has_the_same_architecture_and_fresh_weights(tiny_overrides):
    agent = SACMLRAgent(load_config(None, tiny_overrides), action_dim=1)
    reference = analysis.untrained_like(agent, seed=3)
    assert type(reference) is SACMLRAgent and reference.state_dict().keys() == agent.state_dict().keys()
    assert not torch.equal(reference.critic.encoder.fc.weight, agent.critic.encoder.fc.weight)
    assert torch.equal(analysis.untrained_like(agent, seed=3).critic.encoder.fc.weight, reference.critic.encoder.fc.weight)


@pytest.mark.slow
def test_the_statistics_separate_a_trained_encoder_from_untrained_ones(tiny_overrides, tmp_path, one_thread):
    """A real 800-env-step fit (80 updates) against three fresh initialisations of the same agent.

    The run sets mlr.warmup_steps=1 (the default warm-up of 6000 updates would leave MLR at ~0.1 % of
    its rate here) and a larger MLR batch, so that 80 updates teach the decoder something."""
    from mlr_lightning.cli import main

    code = main(["fit", "--config", "conf/quickstart.yaml", *tiny_overrides, "train.num_env_steps=800", "eval.every_env_steps=0",
                 "mlr.warmup_steps=1", "mlr.batch_size=16", "mlr.lr=2e-3", "tracking.mlflow=false", "tracking.video=false",
                 "run_name=trained"])
    assert code == 0
    trained = analysis.load_agent(tmp_path / "runs" / "trained" / "checkpoints" / "last.ckpt")
    assert int(trained.num_updates) == 80
    untrained = [analysis.untrained_like(trained, seed) for seed in range(3)]
    trajectory = analysis.collect_trajectory(trained, seed=0)

    def gap(agent):  # reconstruction above the shuffled-pairs level, at the masked positions
        result = analysis.masked_prediction_similarity(agent, trajectory)
        return result["masked"] - result["shuffled_masked"]

    trained_gap, untrained_gaps = gap(trained), [gap(a) for a in untrained]
    assert trained_gap > 0.3 and trained_gap > max(untrained_gaps) + 0.25, (trained_gap, untrained_gaps)
    # The trained encoder concentrates the trajectory's latents on fewer directions.
    dims = {name: analysis.effective_dimensions(analysis.encode(a, trajectory["pixels"]))
            for name, a in [("trained", trained)] + [(f"untrained {i}", a) for i, a in enumerate(untrained)]}
    assert dims["trained"] < min(v for k, v in dims.items() if k != "trained"), dims


@pytest.mark.slow
def test_atari_runs_load_and_analyse(tiny_atari_experiment, one_thread):
    from mlflow import MlflowClient

    client = MlflowClient(tiny_atari_experiment["uri"])
    run = analysis.find_run(client, "tiny_atari", mlr=True)
    agent = analysis.load_agent(analysis.checkpoint_of(client, run))
    assert isinstance(agent, RainbowMLRAgent) and int(agent.num_updates) == 20
    trajectory = analysis.collect_trajectory(agent, seed=0)
    assert trajectory["pixels"].shape == (50, 4, 84, 84) and trajectory["action"].shape == (50, 6)  # eval.max_steps=50
    latents = analysis.encode(agent, trajectory["pixels"])
    assert latents.shape == (50, 64 * 7 * 7)
    torch.testing.assert_close(latents, agent.online.encoder(trajectory["pixels"]).flatten(1))
    result = analysis.masked_prediction_similarity(agent, trajectory)
    assert result["per_position"].shape == (4,) and result["windows"] == 47
    summary = analysis.latent_summary({"MLR": latents, "untrained": analysis.encode(analysis.untrained_like(agent), trajectory["pixels"])})
    assert list(summary.index) == ["MLR", "untrained"] and summary.notna().all().all()
