"""Pretraining evaluation: encoder.init_from loads another run's trained encoder, encoder.freeze keeps it
bit-identical through a real fit while the RL heads train; a wrong source fails in one line."""

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from mlr_lightning.agents.rainbow_mlr import RainbowMLRAgent
from mlr_lightning.agents.sac_mlr import SACMLRAgent
from mlr_lightning.cli import main
from mlr_lightning.domains import domain_of, load_config
from mlr_lightning.reporting.analysis import load_agent
from mlr_lightning.training.experiment import fit
from mlr_lightning.training.pretrained import load_pretrained_encoder

ROOT = Path(__file__).resolve().parents[1]


def save_checkpoint(agent, path: Path) -> Path:
    """The two entries of a Lightning checkpoint that a load reads: the constructor arguments and the weights."""
    torch.save({"hyper_parameters": dict(agent.hparams), "state_dict": agent.state_dict()}, path)
    return path


def encoder_weights(agent: SACMLRAgent) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v.clone() for name, module in (("critic", agent.critic.encoder), ("actor", agent.actor.encoder),
                                                          ("target", agent.critic_target.encoder))
            for k, v in module.state_dict().items()}


def test_a_frozen_pretrained_encoder_stays_bit_identical_while_the_heads_train(tiny_overrides, tmp_path, one_thread):
    source = fit(load_config(None, tiny_overrides + ["tracking.mlflow=false", "tracking.video=false", "run_name=source"]))
    trained = load_agent(source / "checkpoints" / "last.ckpt").critic.encoder.state_dict()
    cfg = load_config(None, tiny_overrides + ["tracking.mlflow=false", "tracking.video=false", "run_name=frozen",
                                              f"encoder.init_from={source}", "encoder.freeze=true", "mlr.enabled=false"])
    run = fit(cfg)
    after = load_agent(run / "checkpoints" / "last.ckpt")
    for key, value in encoder_weights(after).items():
        assert torch.equal(value, trained[key.split(".", 1)[1]]), f"{key} changed (or was not loaded)"
    pl.seed_everything(cfg.seed, verbose=False)  # the heads as the run initialised them
    start = SACMLRAgent(cfg, action_dim=1)
    assert not torch.equal(after.critic.q1[0].weight, start.critic.q1[0].weight), "the Q head did not train"
    assert not torch.equal(after.actor.trunk[0].weight, start.actor.trunk[0].weight), "the actor did not train"


def test_an_encoder_loads_into_every_pixel_encoder_of_a_new_agent(tiny_overrides, tmp_path, make_env):
    torch.manual_seed(7)
    source = save_checkpoint(SACMLRAgent(load_config(None, tiny_overrides), action_dim=1), tmp_path / "source.ckpt")
    cfg = load_config(None, tiny_overrides + [f"encoder.init_from={source}"])
    agent = domain_of(cfg).make_agent(cfg, make_env(cfg, 0))
    load_pretrained_encoder(cfg, agent)  # what fit does after make_agent for a new run
    expected = torch.load(source, weights_only=False)["state_dict"]["critic.encoder.fc.weight"]
    for encoder in (agent.critic.encoder, agent.actor.encoder, agent.critic_target.encoder, agent.target_encoder):
        assert torch.equal(encoder.fc.weight, expected)
    assert agent.actor.encoder.convs[0].weight is agent.critic.encoder.convs[0].weight  # still shared


def one_line_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("case", ["atari run", "other shape", "missing"])
def test_a_wrong_encoder_source_fails_in_one_line_naming_the_key(case, tiny_overrides, tmp_path, capsys):
    if case == "atari run":
        cfg = load_config(ROOT / "conf/atari/quickstart.yaml", ["rainbow.hidden_dim=32", "rainbow.num_atoms=11",
                                                                 "mlr.decoder_dim=16"])
        source, expected = save_checkpoint(RainbowMLRAgent(cfg, num_actions=6), tmp_path / "atari.ckpt"), "is a atari run"
    elif case == "other shape":
        other = load_config(None, tiny_overrides + ["encoder.num_filters=4"])
        source, expected = save_checkpoint(SACMLRAgent(other, action_dim=1), tmp_path / "narrow.ckpt"), "another shape"
    else:
        source, expected = tmp_path / "no-such-run", "not a file"
    code = main(["fit", "--config", str(ROOT / "conf/quickstart.yaml"), *tiny_overrides, f"encoder.init_from={source}",
                 "mlr.enabled=false"])
    assert code == 2
    line = one_line_error(capsys)
    assert line.startswith("config error: encoder.init_from") and expected in line
    assert not (tmp_path / "runs").exists(), "nothing may be created"


def test_freezing_the_encoder_with_mlr_on_is_refused(tiny_overrides, capsys):
    assert main(["fit", "--config", str(ROOT / "conf/quickstart.yaml"), *tiny_overrides, "encoder.freeze=true"]) == 2
    assert "encoder.freeze leaves MLR nothing to train" in one_line_error(capsys)
