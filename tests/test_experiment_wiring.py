"""How fit wires a run: the callbacks reach the Trainer in the order their hooks must run, and the
collectors act in environments seeded by the rank."""

import mlr_lightning  # noqa: F401

import pytest
import torch

from mlr_lightning.data.stream import StepWriter
from mlr_lightning.data.torchrl_internals import collector_observation
from mlr_lightning.domains import domain_of, load_config
from mlr_lightning.training.experiment import (
    RunCallbacks,
    collector_factory,
    make_agent,
    make_stream,
    make_trainer,
    rank_seed,
)


@pytest.mark.parametrize("config, overrides", [
    ("conf/quickstart.yaml", []),
    ("conf/atari/quickstart.yaml", ["trainer.accelerator=cpu"]),  # a domain callback: the priority update
])
def test_callbacks_reach_the_trainer_in_their_order(config, overrides, tmp_path):
    cfg = load_config(config, overrides)
    domain = domain_of(cfg)
    replay = domain.make_replay(cfg)
    agent, _ = make_agent(cfg, domain, fresh=True)
    callbacks = RunCallbacks.of(cfg, domain, replay, make_stream(cfg, domain, replay, agent), tmp_path)
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


def test_collectors_act_in_environments_seeded_by_the_rank_and_moved_by_each_restart(tiny_cfg, tmp_path):
    domain = domain_of(tiny_cfg)
    agent, pixels_shape = make_agent(tiny_cfg, domain, fresh=True)
    trainer = make_trainer(tiny_cfg, tmp_path, [], [])
    agent.trainer = trainer  # as fit does: the collectors are built once the Trainer holds the agent
    replay = domain.make_replay(tiny_cfg)
    replay.place(tiny_cfg.replay.device, trainer.strategy.root_device, pixels_shape)
    writer = StepWriter(make_stream(tiny_cfg, domain, replay, agent))
    make_collector = collector_factory(tiny_cfg, domain, agent)
    first_pixels = []
    for restarts in (0, 1):
        collector = make_collector(0, restarts, writer)
        expected = domain.make_env(tiny_cfg, rank_seed(tiny_cfg, trainer.global_rank) + restarts)
        first_pixels.append(collector_observation(collector)["pixels"])  # after the collector's reset
        assert torch.equal(first_pixels[-1], expected.reset()["pixels"])
        collector.shutdown()
        expected.close()
    assert not torch.equal(*first_pixels), "a rebuilt environment replays the crashed one's episodes"
