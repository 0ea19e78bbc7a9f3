"""The fast data path gives the same data: deduplicated batches assemble to the stacked ones bit for
bit, on real collector data, for both replays; the replay's device and prefetching leave the
draws reproducible and resumable; the finite-loss guard, compiled updates and their switches."""

import mlr_lightning  # noqa: F401

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensordict.nn import TensorDictModule

from mlr_lightning.agents.base import FiniteGuard, NonFiniteLossError
from mlr_lightning.config import ConfigError
from mlr_lightning.domains import load_config
from mlr_lightning.data.frames import FRAMES, assemble_stacks
from mlr_lightning.data.prioritized import PrioritizedReplay
from mlr_lightning.data.replay import UniformReplay
from mlr_lightning.data.stream import ExperienceStream, ReplayWriteError, make_collector
from mlr_lightning.domains.dmc import DMC
from mlr_lightning.training.callbacks import HardStop


def sample_both(replay, seed, **kwargs):
    """The deduplicated batch and the stacked one, from the same draws (TorchRL's prioritized
    sampler draws from numpy's generator)."""
    torch.manual_seed(seed), np.random.seed(seed)
    deduplicated = replay.sample(**kwargs)
    after = torch.get_rng_state(), np.random.get_state()[1]
    torch.manual_seed(seed), np.random.seed(seed)
    stacked = replay.sample(stacked=True, **kwargs)
    assert torch.equal(after[0], torch.get_rng_state()) and (after[1] == np.random.get_state()[1]).all(), \
        "the two paths draw different random numbers"
    return deduplicated, stacked


def assert_same(batch, reference):
    assert set(batch.keys(True, True)) == set(reference.keys(True, True))
    for key in reference.keys(True, True):
        a, b = batch[key], reference[key]
        assert a.shape == b.shape and a.dtype == b.dtype and (a.eq(b) | (a.isnan() & b.isnan())).all(), f"{key} differs"


def stacked_bytes(batch):
    return sum(batch[key].numel() for key in batch.keys(True, True) if key[-1] in ("pixels", "next_pixels"))


@pytest.mark.parametrize("capacity", [10_000, 300])  # 300 < 378 rows: the storage wraps around
def test_deduplicated_dmc_batches_equal_the_stacked_ones(fill_replay, collected, capacity):
    replay = fill_replay(collected, capacity=capacity, seq_len=16, batch_size=512, window_batch_size=128)  # the paper's sizes
    for seed in range(3):
        deduplicated, stacked = sample_both(replay, seed)
        frames = deduplicated[FRAMES]
        # A transition needs S + 1 frames (obs and next obs share S - 1), a window K + S - 1.
        assert frames.shape == (512 * 4 + 128 * 18, 3, 24, 24) and frames.dtype == torch.uint8
        assert frames.numel() <= 0.5 * stacked_bytes(stacked)
        assert_same(assemble_stacks(deduplicated), stacked)


def test_draws_are_those_of_the_listing_of_every_valid_row(fill_replay, collected):
    """The rank-to-row mapping of transition sampling draws exactly the rows of the original listing."""
    replay = fill_replay(collected, capacity=300)
    store = replay.store
    valid = store.field("has_action")[: len(store)].reshape(-1).clone()
    valid[(store.cursor - 1) % store.capacity] = False
    valid = valid.nonzero().squeeze(-1)
    torch.manual_seed(0)
    expected = valid[torch.randint(valid.numel(), (4096,))]
    torch.manual_seed(0)
    assert torch.equal(replay._valid_transition_rows(4096), expected)


def pong_steps(collect, count):
    """Real Pong steps (random actions, 4 stacked 84x84 frames), episodes cut at 37 agent steps (truncations)."""
    from mlr_lightning.envs.atari import make_atari_env

    return collect(make_atari_env("pong", 4, 84, 4, 30, 0.0, 108_000, train=True, seed=0, max_steps=37), count)


@pytest.fixture(scope="module")
def pong(collect):
    return pong_steps(collect, 200)


@pytest.mark.parametrize("windows, capacity, n_step, seq_len", [(True, 1000, 10, 16), (True, 150, 3, 4), (False, 150, 10, 1)])
def test_deduplicated_atari_batches_equal_the_stacked_ones(pong, windows, capacity, n_step, seq_len):
    replay = PrioritizedReplay(capacity, 4, seq_len, n_step=n_step, discount=0.99, alpha=0.5, priority_eps=1e-6,
                               batch_size=64, beta_start=0.4, beta_end=1.0, windows=windows)
    for t in range(len(pong)):
        replay.extend(pong[t : t + 1], pong["collector", "traj_ids"][t : t + 1])
    assert int(pong["next", "truncated"].sum()) >= 4
    for seed in range(3):
        deduplicated, stacked = sample_both(replay, seed, progress=0.5)
        # One block of horizon + S frames per start row with windows, two stacks without.
        per_row = max(n_step, seq_len - 1) + 4 if windows else 8
        assert deduplicated[FRAMES].shape == (64 * per_row, 1, 84, 84)
        if windows:
            assert deduplicated[FRAMES].numel() <= 0.5 * stacked_bytes(stacked)
        assert_same(assemble_stacks(deduplicated), stacked)


def test_replay_device_auto_is_the_training_device_and_snapshots_keep_the_batches(fill_replay, collected, tmp_path):
    replay = fill_replay(collected, capacity=300, seq_len=4, batch_size=32, window_batch_size=8)
    torch.save(replay.state_dict(), tmp_path / "replay.pt")  # as snapshots write it
    restored = UniformReplay(300, 3, 4, batch_size=32, window_batch_size=8)
    assert restored.place("auto", torch.device("cpu"), (9, 24, 24)) == torch.device("cpu")
    restored.load_state_dict(torch.load(tmp_path / "replay.pt", weights_only=False))
    torch.manual_seed(0)
    expected = replay.sample()
    torch.manual_seed(0)
    assert_same(restored.sample(), expected)
    with pytest.raises(RuntimeError, match="before any write"):
        restored.place("cpu", torch.device("cpu"), (9, 24, 24))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("override, message", [
    ("replay.device=cuda:0", "replay.device (cuda:0) is not a device of this machine"),
    ("replay.device=tpu9", "replay.device must be cpu, auto or a device"),
    ("trainer.cudagraphs=true", "trainer.cudagraphs needs a CUDA GPU"),
    ("trainer.compile=fast", "trainer.compile must be false, default or max-autotune"),
    ("trainer.finite_check_every=0", "trainer.finite_check_every must be >= 1"),
])
def test_gpu_switches_are_refused_by_name_where_they_cannot_work(tiny_base_overrides, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [*tiny_base_overrides, override])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_the_finite_guard_names_the_first_non_finite_update_whenever_it_checks():
    guard = FiniteGuard()
    for update in range(6):
        critic = torch.tensor(float("nan") if update >= 2 else 1.0)
        actor = torch.tensor(float("inf") if update in (2, 4) else 1.0)
        guard.record({"critic_loss": critic, "actor_loss": actor} if update % 2 == 0 else {"critic_loss": critic}, update)
        if update == 1:
            guard.check()  # all finite so far
    with pytest.raises(NonFiniteLossError, match=r"^non-finite critic_loss at update 2 \(then actor_loss\)$"):
        guard.check()


# ----------------------------------------------------------------------------------- prefetching
def tiny_stream(cfg, prefetch, replay=None):
    env = DMC.make_env(cfg, seed=0)
    policy = TensorDictModule(lambda pixels: torch.rand(1) * 2 - 1, in_keys=["pixels"], out_keys=["action"])
    replay = replay or DMC.make_replay(cfg)
    total = cfg.train.num_env_steps // cfg.env.action_repeat
    return ExperienceStream(lambda start, restarts, writer: make_collector(env, policy, writer, total - start, max(0, cfg.train.init_steps - start), "cpu"),
                            replay, total, cfg.train.init_steps, 1, cfg.env.action_repeat, 0, prefetch=prefetch)


def take(iterator, count):
    return [assemble_stacks(next(iterator)) for _ in range(count)]


@pytest.mark.parametrize("fault", ["replay write", "second Ctrl-C"])
def test_only_environment_errors_inside_a_collection_step_rebuild_the_environment(tiny_cfg, fault):
    """The collector steps the environment and writes the replay in one call: a replay fault is
    raised as one (a bug to see, not a crash to survive), and a second Ctrl-C landing in the
    environment stops the stream."""
    stream = tiny_stream(tiny_cfg, prefetch=False)
    build = stream.make_collector

    def faulty_collector(start, restarts, writer):
        collector = build(start, restarts, writer)
        if fault == "replay write":
            stream.replay.add = lambda step, episode: (_ for _ in ()).throw(ValueError("row too wide"))
        else:
            collector.env._game_step = lambda action: (_ for _ in ()).throw(HardStop("a second Ctrl-C"))
        return collector

    stream.make_collector = faulty_collector
    expected, match = ((ReplayWriteError, r"^storing agent step 0 failed: ValueError\('row too wide'\)$")
                       if fault == "replay write" else (HardStop, "^a second Ctrl-C$"))
    with pytest.raises(expected, match=match):
        next(iter(stream))
    assert stream.counters.env_restarts == 0
    stream.close()


def test_prefetching_draws_each_batch_one_step_earlier_and_resumes_exactly(tiny_cfg, tmp_path, one_thread):
    torch.manual_seed(0)
    stream = tiny_stream(tiny_cfg, prefetch=True)
    running = iter(stream)
    prefetched = take(running, 4)
    # No episode ends in these 23 agent steps, so after c steps rows 0 .. c - 1 are stored. The
    # first batch is drawn at once; each later one before the newest step was stored, so its
    # windows never reach row c - 1.
    steps = [int(b["env_steps"]) // tiny_cfg.env.action_repeat for b in prefetched]
    assert steps == [20, 21, 22, 23]
    assert all(int(b["mlr", "index"].max()) <= c - 2 for b, c in zip(prefetched[1:], steps[1:]))
    state = stream.state_dict()  # between two updates, with the next batch being drawn
    assert state["prefetch"]["pending"] is not None
    torch.save(stream.replay.state_dict(), tmp_path / "replay.pt")
    rest = take(running, 4)
    stream.close()

    replay = DMC.make_replay(tiny_cfg)
    replay.load_state_dict(torch.load(tmp_path / "replay.pt", weights_only=False))
    resumed = tiny_stream(tiny_cfg, prefetch=True, replay=replay)
    resumed.load_state_dict(state)
    again = take(iter(resumed), 4)
    resumed.close()
    for a, b in zip(rest, again):
        assert_same(b, a)


# ------------------------------------------------------------------------------------ compilation
def fit_updates(agent, batches):
    import lightning.pytorch as pl
    from torch._dynamo.utils import counters
    from torch.utils.data import DataLoader

    from mlr_lightning.training.experiment import _as_is

    counters.clear()

    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(agent, DataLoader([b.clone() for b in batches], batch_size=None, collate_fn=_as_is))
    assert (counters["stats"]["unique_graphs"] > 0) == (agent.cfg.trainer.compile is not False), "compiled or not as configured"
    return {k: v.detach().clone() for k, v in agent.state_dict().items()}


def assert_close_states(compiled, eager):
    assert compiled.keys() == eager.keys(), "compiling changed the checkpoint's keys"
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-5, atol=1e-6, msg=lambda m: f"{key}: {m}")


def batches_of(replay, count, **kwargs):
    torch.manual_seed(1), np.random.seed(1)
    return [replay.sample(**kwargs).update({"env_steps": torch.tensor(0), "episode_return": torch.tensor(float("nan"))})
            for _ in range(count)]


@pytest.mark.slow  # inductor compiles C++ kernels on the CPU: minutes
def test_compiled_updates_equal_eager_ones(tiny_overrides, fill_replay, collected, collect, one_thread):
    """Three SAC+MLR and three Rainbow+MLR updates through Lightning, compiled and eager, from the same
    weights, batches and seeds: the same weights within fp32 tolerance (and the same random draws)."""
    from mlr_lightning.agents.rainbow_mlr import RainbowMLRAgent
    from mlr_lightning.agents.sac_mlr import SACMLRAgent

    cfg = load_config(None, tiny_overrides)
    replay = fill_replay(collected, capacity=1000, seq_len=cfg.mlr.seq_len, batch_size=cfg.train.batch_size,
                         window_batch_size=cfg.mlr.batch_size)
    batches = batches_of(replay, 3)
    states = {}
    for mode in (False, "default"):
        torch.manual_seed(0)
        agent = SACMLRAgent(load_config(None, [*tiny_overrides, f"trainer.compile={str(mode).lower()}"]), action_dim=1)
        states[mode] = fit_updates(agent, batches)
    assert_close_states(states["default"], states[False])

    atari = ["domain=atari", "env.task=pong", "mlr.seq_len=4", "mlr.block_size=2", "mlr.decoder_dim=16",
             "rainbow.hidden_dim=32", "rainbow.num_atoms=11", "rainbow.n_step=3", "train.batch_size=4"]
    prioritized = PrioritizedReplay(200, 4, 4, n_step=3, discount=0.99, alpha=0.5, priority_eps=1e-6, batch_size=4,
                                    beta_start=0.4, beta_end=1.0, windows=True)
    pong = pong_steps(collect, 60)
    for t in range(len(pong)):
        prioritized.extend(pong[t : t + 1], pong["collector", "traj_ids"][t : t + 1])
    batches = batches_of(prioritized, 3, progress=0.5)
    for mode in (False, "default"):
        torch.manual_seed(0)
        agent = RainbowMLRAgent(OmegaConf.to_container(load_config(None, [*atari, f"trainer.compile={str(mode).lower()}"])),
                                num_actions=6)
        states[mode] = fit_updates(agent, batches)
    assert_close_states(states["default"], states[False])


def test_a_sparse_finite_check_still_names_the_first_non_finite_update(tiny_overrides, fill_replay, collected, one_thread):
    from mlr_lightning.agents.sac_mlr import SACMLRAgent

    cfg = load_config(None, [*tiny_overrides, "trainer.finite_check_every=4"])
    replay = fill_replay(collected, capacity=1000, seq_len=cfg.mlr.seq_len, batch_size=cfg.train.batch_size,
                         window_batch_size=cfg.mlr.batch_size)
    batches = batches_of(replay, 6)
    batches[2]["rl", "reward"][0] = float("nan")  # the third update's critic loss
    torch.manual_seed(0)
    agent = SACMLRAgent(cfg, action_dim=1)
    with pytest.raises(NonFiniteLossError, match=r"^non-finite train/critic_loss at update 2 \(then "):
        fit_updates(agent, batches)
    assert agent.updates == 4, "checked after the fourth update, without waiting for the device before"
