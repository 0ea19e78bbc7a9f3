"""Scaling paths at tiny size on CPU: DDP over 2 gloo processes, and the mixed-precision paths
(their speed is a GPU matter; here they must run and keep the numerically sensitive parts in fp32)."""

import csv

import pytest
import torch
from mlflow import MlflowClient

from mlr_lightning.agents import sac_mlr
from mlr_lightning.mlr import objective
from mlr_lightning.training.snapshot import LAST, snapshots
from mlr_lightning.domains import load_config
from mlr_lightning.data.frames import FrameStore
from mlr_lightning.training.experiment import fit

pytestmark = pytest.mark.slow  # real runs end to end: minutes


def test_ddp_ranks_average_gradients_and_collect_their_own_data(tiny_overrides, tmp_path, run_cli):
    result = run_cli("fit", "--config", "conf/quickstart.yaml", *tiny_overrides, "run_name=ddp", "tracking.video=false",
                     "trainer.devices=2", "trainer.strategy=ddp", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "ddp"
    snapshot = snapshots(run_dir / "checkpoints")[0]
    ranks = [torch.load(snapshot / f"stream-rank{r}.pt", weights_only=False) for r in (0, 1)]

    # Each rank acts with its own copy of the actor: equal after 20 updates on different data only
    # if the gradients were averaged.
    policies = [r["collector"]["policy_state_dict"] for r in ranks]
    assert all(torch.equal(policies[0][k], policies[1][k]) for k in policies[0])
    assert all(r["counters"]["agent_steps"] == 320 // 8 for r in ranks), "each rank steps its own environment"
    replays = []
    for r in (0, 1):
        store = FrameStore(1000, 3)
        store.load_state_dict(torch.load(snapshot / f"replay-rank{r}.pt", weights_only=False))
        replays.append(store.stacked_pixels(torch.arange(len(store))))
    assert not torch.equal(*replays), "both ranks collected the same frames (same environment seed)"

    with open(run_dir / "metrics.csv", newline="") as handle:
        eval_steps = [row["step"] for row in csv.DictReader(handle) if row.get("eval/return_mean")]
    assert eval_steps == ["0", "160", "320"], "evaluation ran other than once per point"
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    assert len(client.search_runs([client.get_experiment_by_name("mlr_lightning").experiment_id])) == 1


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_keeps_losses_distributions_and_weights_in_fp32(precision, tiny_overrides, monkeypatch):
    seen = []
    real_loss = objective.latent_loss

    def recording_loss(prediction, target, kind, eps):
        loss = real_loss(prediction, target, kind, eps)
        seen.append((prediction.dtype, loss.dtype))
        return loss

    monkeypatch.setattr(objective, "latent_loss", recording_loss)
    cfg = load_config(None, tiny_overrides + [f"trainer.precision={precision}", "tracking.mlflow=false",
                                              "tracking.video=false", "train.num_env_steps=240",
                                              "eval.every_env_steps=240"])  # 10 updates: bf16 is slow on CPU
    run_dir = fit(cfg)

    low = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}[precision]
    assert seen and all(p == low for p, _ in seen), "the networks did not run in reduced precision"
    assert all(loss == torch.float32 for _, loss in seen), "the MLR loss left fp32"
    ckpt = torch.load(run_dir / "checkpoints" / LAST, weights_only=False)
    weights = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights), "fp32 master weights and targets"
    if precision == "16-mixed":
        assert ckpt["MixedPrecision"]["scale"] > 0, "no gradient scaler under 16-mixed"
    with open(run_dir / "metrics.csv", newline="") as handle:
        losses = [float(row["train/critic_loss"]) for row in csv.DictReader(handle) if row.get("train/critic_loss")]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def test_actor_distribution_is_fp32_under_autocast(tiny_cfg):
    agent = sac_mlr.SACMLRAgent(tiny_cfg, action_dim=1)
    obs = torch.randint(0, 255, (4, 9, 20, 20), dtype=torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, pi, log_pi = agent.actor(obs)
        q1, q2 = agent.critic(obs, pi)
    assert pi.dtype == log_pi.dtype == q1.dtype == q2.dtype == torch.float32
