"""Benchmark (prints figures; not a test): agent update cost, replay sampling and snapshots, environment throughput.

    .venv/bin/python benchmarks/bench_updates.py            # everything (~5 min on 2 CPU cores)
    .venv/bin/python benchmarks/bench_updates.py --skip-paper-mlr   # without the ~20 s/update case
    .venv/bin/python benchmarks/bench_updates.py --atari only       # only the Atari-100k figures

Update times are measured through the real Lightning ``training_step`` (manual optimization, all
optimizers) on synthetic uint8 batches of the right shapes; the breakdown comes from the same
``timeit`` blocks the training loop logs as ``time/*``.
"""

from __future__ import annotations

import mlr_lightning  # noqa: F401  (torch stack before dm_control)

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch.utils.data import DataLoader
from torchrl import timeit

from mlr_lightning.agents.sac_mlr import SACMLRAgent
from mlr_lightning.config import load_config
from mlr_lightning.data.replay import UniformReplay
from mlr_lightning.data.stream import make_collector
from mlr_lightning.domains import domain_of
from mlr_lightning.training.experiment import _as_is

CONF = Path(__file__).resolve().parents[1] / "conf"


class StepTimer(pl.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_start(self, *args):
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, *args):
        self.times.append(time.perf_counter() - self.t0)


def synthetic_batch(cfg, action_dim: int) -> dict:
    e, b = cfg.env, cfg.train.batch_size
    c, s = 3 * e.frame_stack, e.image_size
    frames = lambda *shape: torch.randint(0, 256, (*shape, c, s, s), dtype=torch.uint8)  # noqa: E731
    batch = TensorDict({
        "rl": TensorDict(
            {"pixels": frames(b), "next_pixels": frames(b), "action": torch.rand(b, action_dim) * 2 - 1,
             "reward": torch.rand(b, 1), "terminated": torch.zeros(b, 1, dtype=torch.bool)}, [b]),
        "env_steps": torch.tensor(0),
        "episode_return": torch.tensor(float("nan")),
    })
    if cfg.mlr.enabled:
        m, k = cfg.mlr.batch_size, cfg.mlr.seq_len
        batch["mlr"] = TensorDict({"pixels": frames(m, k), "action": torch.rand(m, k, action_dim) * 2 - 1}, [m, k])
    return batch


def time_updates(label: str, cfg, repeats: int, action_dim: int = 1) -> None:
    torch.manual_seed(0)
    agent = SACMLRAgent(cfg, action_dim)
    timer = StepTimer()
    batch = synthetic_batch(cfg, action_dim)
    loader = DataLoader([batch] * (repeats + 1), batch_size=None, collate_fn=_as_is)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=10**6,
                         callbacks=[timer])
    timeit.erase()
    trainer.fit(agent, loader)
    parts = {k.split("/")[-1]: v for k, v in timeit.todict().items() if k.startswith("update/")}
    shapes = f"RL batch {cfg.train.batch_size}" + (
        f", MLR {cfg.mlr.batch_size}x{cfg.mlr.seq_len} frames" if cfg.mlr.enabled else "")
    timed = timer.times[1:]  # the first update includes one-off allocations
    print(f"{label:<28} {shapes:<34} {statistics.median(timed):7.3f} s/update   "
          + "  ".join(f"{k} {v:.3f}" for k, v in parts.items()))


def replay_sampling(num_rows: int, episode_len: int, seq_len: int) -> UniformReplay:
    """Fill a replay with synthetic 3x100x100 frames and time both samplers at the paper's sizes."""
    replay = UniformReplay(num_rows, frame_stack=3, seq_len=seq_len, batch_size=512, window_batch_size=128)
    store = replay.store
    chunk = 5000
    for start in range(0, num_rows, chunk):
        n = min(chunk, num_rows - start)
        step = (torch.arange(start, start + n) % episode_len).reshape(n, 1)
        store.frame_buffer.extend(TensorDict({"pixels": torch.randint(0, 256, (n, 3, 100, 100), dtype=torch.uint8)}, [n]))
        store.buffer.extend(TensorDict({
            "action": torch.zeros(n, 1), "reward": torch.zeros(n, 1), "terminated": torch.zeros(n, 1, dtype=torch.bool),
            "step_count": step, "has_action": torch.ones(n, 1, dtype=torch.bool),
            "trajectory": torch.arange(start, start + n) // episode_len}, [n]))
    for label, fn in [("transitions x512", lambda: replay.sample_transitions(512)),
                      (f"windows 128x{seq_len}", lambda: replay.sample_windows(128))]:
        fn()
        t0 = time.perf_counter()
        for _ in range(5):
            fn()
        print(f"replay of {num_rows} frames: sample {label:<16} {(time.perf_counter() - t0) / 5 * 1000:7.1f} ms")
    return replay


def replay_snapshot(replay: UniformReplay) -> None:
    """What a full-state snapshot adds: writing the replay (TorchRL's memory-mapped format) and reading it back."""
    with tempfile.TemporaryDirectory(dir=CONF.parent) as tmp:  # on the project's disk, not a tmpfs
        t0 = time.perf_counter()
        replay.dumps(Path(tmp))
        written = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
        restored = UniformReplay(replay.store.capacity, replay.store.frame_stack, replay.seq_len, 512, 128)
        t0 = time.perf_counter()
        restored.loads(Path(tmp))
        restored.sample_transitions(512)  # touch the loaded storage
        loaded = time.perf_counter() - t0
    print(f"replay of {len(replay)} frames: snapshot {size / 2**30:.2f} GiB written in {written:.1f} s, "
          f"loaded in {loaded:.1f} s")


def env_throughput(task: str, action_repeat: int, fast_render: bool, agent_steps: int) -> None:
    """Collector agent steps per second against a bare dm_control loop with the same rendering."""
    from mlr_lightning.envs.dmc import split_task
    from mlr_lightning.envs.dmc_pixels import ActionRepeatPixels  # selects the GL backend first

    from dm_control import suite

    domain, name = split_task(task)
    bare = ActionRepeatPixels(suite.load(domain, name, task_kwargs={"random": 0}), action_repeat, 100, 100, 0, fast_render)
    spec = bare.action_spec()
    bare.reset()
    t0 = time.perf_counter()
    for _ in range(agent_steps):
        if bare.step(spec.generate_value()).last():
            bare.reset()
    bare_rate = agent_steps / (time.perf_counter() - t0)

    cfg = load_config(CONF / "dmc" / f"{task}.yaml", [f"env.fast_render={str(fast_render).lower()}"])
    env = domain_of(cfg).make_env(cfg, seed=0)
    policy = TensorDictModule(lambda pixels: torch.zeros(env.action_spec.shape), in_keys=["pixels"], out_keys=["action"])
    collector = make_collector(env, policy, agent_steps, init_steps=agent_steps, policy_device=torch.device("cpu"))
    replay = domain_of(cfg).make_replay(load_config(CONF / "dmc" / f"{task}.yaml", ["replay.capacity=10000"]))
    t0 = time.perf_counter()
    for steps in collector:
        replay.extend(steps)
    rate = agent_steps / (time.perf_counter() - t0)
    collector.shutdown()
    render = "fast render" if fast_render else "default render"
    print(f"{task:<18} AR {action_repeat} {render:<14} bare dm_control {bare_rate:6.1f} agent steps/s "
          f"({bare_rate * action_repeat:6.0f} env steps/s) | collector+replay {rate:6.1f} agent steps/s "
          f"({rate * action_repeat:6.0f} env steps/s, {rate / bare_rate:.0%} of bare)")


# ---------------------------------------------------------------------------------------- Atari
def synthetic_atari_batch(cfg, num_actions: int) -> dict:
    e, b, k = cfg.env, cfg.train.batch_size, cfg.mlr.seq_len
    frames = lambda *shape: torch.randint(0, 256, (*shape, e.frame_stack, e.image_size, e.image_size), dtype=torch.uint8)  # noqa: E731
    one_hot = lambda *shape: torch.nn.functional.one_hot(torch.randint(0, num_actions, shape), num_actions)  # noqa: E731
    rl = TensorDict({"index": torch.arange(b), "weight": torch.rand(b), "pixels": frames(b), "action": one_hot(b),
                     "return": torch.randn(b), "discount": torch.full((b,), 0.99**10), "next_pixels": frames(b)}, [b])
    batch = TensorDict({"rl": rl, "env_steps": torch.tensor(0), "beta": torch.tensor(0.4),
                        "episode_return": torch.tensor(float("nan"))})
    if cfg.mlr.enabled:
        batch["mlr"] = TensorDict({"pixels": frames(b, k), "action": one_hot(b, k)}, [b, k])
    return batch


def time_atari_updates(label: str, cfg, repeats: int, num_actions: int = 6) -> None:
    from mlr_lightning.agents.rainbow_mlr import RainbowMLRAgent

    torch.manual_seed(0)
    agent = RainbowMLRAgent(cfg, num_actions)
    timer = StepTimer()
    loader = DataLoader([synthetic_atari_batch(cfg, num_actions)] * (repeats + 1), batch_size=None, collate_fn=_as_is)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=10**6,
                         callbacks=[timer])
    timeit.erase()
    trainer.fit(agent, loader)
    parts = {k.split("/")[-1]: v for k, v in timeit.todict().items() if k.startswith("update/") and v > 0}
    m = cfg.mlr
    shapes = f"batch {cfg.train.batch_size}" + (
        f", MLR {cfg.train.batch_size}x{m.seq_len} frames, width {m.decoder_dim or agent.latent_dim}" if m.enabled else "")
    params = sum(p.numel() for p in agent.parameters() if p.requires_grad) / 1e6
    timed = timer.times[1:]
    print(f"{label:<28} {shapes:<44} {params:6.1f}M trainable {statistics.median(timed):7.3f} s/update   "
          + "  ".join(f"{k} {v:.3f}" for k, v in parts.items()))


def atari_throughput(game: str, agent_steps: int) -> None:
    """Collector (+ prioritized replay) agent steps per second against a bare ale-py loop, same preprocessing."""
    import numpy as np

    from mlr_lightning.domains.atari import ATARI
    from mlr_lightning.envs.atari import make_gym_atari

    bare = make_gym_atari(game, 4, 84, 30, 0.0, 108_000, terminal_on_life_loss=True, resize="linear")
    bare.reset(seed=0)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(agent_steps):
        _, _, terminated, truncated, _ = bare.step(int(rng.integers(bare.action_space.n)))
        if terminated or truncated:
            bare.reset()
    bare_rate = agent_steps / (time.perf_counter() - t0)

    cfg = load_config(CONF / "atari" / f"{game}.yaml", ["replay.capacity=10000"])
    env = ATARI.make_env(cfg, 0, train=True)
    policy = TensorDictModule(lambda pixels: env.action_spec.rand(), in_keys=["pixels"], out_keys=["action"])
    collector = make_collector(env, policy, agent_steps, init_steps=agent_steps, policy_device=torch.device("cpu"))
    replay = ATARI.make_replay(cfg)
    t0 = time.perf_counter()
    for steps in collector:
        replay.extend(steps)
    rate = agent_steps / (time.perf_counter() - t0)
    collector.shutdown()
    print(f"{game:<10} frame skip 4, 84x84 grey, 4 stacked | bare ale-py + AtariPreprocessing {bare_rate:6.0f} agent "
          f"steps/s | TorchRL collector + prioritized replay {rate:6.0f} agent steps/s ({rate / bare_rate:.0%} of bare)")


def atari_main(args) -> None:
    print("== Atari: one Rainbow update (median) ==")
    quick = CONF / "atari" / "quickstart.yaml"
    time_atari_updates("Atari quickstart Rainbow", load_config(quick, ["mlr.enabled=false"]), repeats=5)
    time_atari_updates("Atari quickstart +MLR", load_config(quick), repeats=5)
    paper = CONF / "atari" / "pong.yaml"
    time_atari_updates("Atari paper Rainbow (Baseline)", load_config(paper, ["mlr.enabled=false"]), repeats=3)
    if not args.skip_paper_mlr:
        time_atari_updates("Atari paper Rainbow+MLR", load_config(paper), repeats=args.atari_mlr_repeats)
    print("\n== Atari environment throughput ==")
    atari_throughput("pong", agent_steps=1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-paper-mlr", action="store_true", help="skip the paper-size SAC+MLR update (~20 s each)")
    parser.add_argument("--atari", choices=["also", "only", "skip"], default="also", help="the Atari-100k figures")
    parser.add_argument("--atari-mlr-repeats", type=int, default=2, help="timed paper-size Atari MLR updates")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU\n")
    if args.atari == "only":
        return atari_main(args)

    print("== One agent update (median) ==")
    quick = CONF / "quickstart.yaml"
    time_updates("quickstart SAC", load_config(quick, ["mlr.enabled=false"]), repeats=5)
    time_updates("quickstart SAC+MLR", load_config(quick), repeats=5)
    paper = CONF / "dmc" / "cartpole_swingup.yaml"
    time_updates("paper SAC (Baseline)", load_config(paper, ["mlr.enabled=false"]), repeats=2)
    if not args.skip_paper_mlr:
        time_updates("paper SAC+MLR", load_config(paper), repeats=2)

    print("\n== Replay sampling (paper sizes) ==")
    replay_snapshot(replay_sampling(100_000, episode_len=126, seq_len=16))

    print("\n== Environment throughput (100x100 pixels, camera 0, 3 stacked frames) ==")
    for task, repeat in [("cartpole_swingup", 8), ("cheetah_run", 4)]:
        for fast in (False, True):
            env_throughput(task, repeat, fast, agent_steps=250)
    if args.atari == "also":
        print()
        atari_main(args)


if __name__ == "__main__":
    main()
