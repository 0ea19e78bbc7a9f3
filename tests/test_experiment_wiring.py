"""How fit wires a run: the callbacks reach the Trainer in the order their hooks must run."""

import mlr_lightning  # noqa: F401

import pytest

from mlr_lightning.domains import domain_of, load_config
from mlr_lightning.training.experiment import RunCallbacks, make_stream, make_trainer


@pytest.mark.parametrize("config, overrides", [
    ("conf/quickstart.yaml", []),
    ("conf/atari/quickstart.yaml", ["trainer.accelerator=cpu"]),  # a domain callback: the priority update
])
def test_callbacks_reach_the_trainer_in_their_order(config, overrides, tmp_path):
    cfg = load_config(config, overrides)
    domain = domain_of(cfg)
    replay = domain.make_replay(cfg)
    callbacks = RunCallbacks.of(cfg, domain, replay, make_stream(cfg, domain, replay), tmp_path)
    trainer = make_trainer(cfg, tmp_path, [], callbacks.in_order())
    ours = [c for c in trainer.callbacks if c in callbacks.in_order()]
    expected = [callbacks.cost, callbacks.progress, *callbacks.domain, callbacks.evaluation,
                callbacks.cost.after_evaluation, callbacks.checkpoint, callbacks.interrupt, callbacks.artifacts]
    assert ours == expected  # Lightning moves no callback of ours (it reorders its Checkpoint subclasses)
    assert len(callbacks.domain) == (cfg.domain == "atari")
    # The snapshot holds what the domain's callbacks and the evaluation change: they run before it.
    assert ours.index(callbacks.checkpoint) > max(ours.index(c) for c in [*callbacks.domain, callbacks.evaluation])
    assert ours[-1] is callbacks.artifacts
    # The cost's evaluating interval holds the evaluation and nothing else of ours.
    assert ours[0] is callbacks.cost
    assert ours.index(callbacks.cost.after_evaluation) == ours.index(callbacks.evaluation) + 1
