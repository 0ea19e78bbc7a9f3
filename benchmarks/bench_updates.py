"""Benchmark (prints figures; not a test): agent update cost, replay sampling and snapshots, environment throughput.

    .venv/bin/python benchmarks/bench_updates.py                    # everything (~10 min on 2 CPU cores)
    .venv/bin/python benchmarks/bench_updates.py --skip-paper-mlr   # without the ~20 s/update cases
    .venv/bin/python benchmarks/bench_updates.py --atari only       # only the Atari-100k figures
    .venv/bin/python benchmarks/bench_updates.py --only data        # sampling and collector figures (~2 min)
    .venv/bin/python benchmarks/bench_updates.py --only updates --skip-paper-mlr   # update times, eager vs compiled
    .venv/bin/python benchmarks/bench_updates.py --only gpu         # the GPU figures (benchmarks/gpu.sh)
    .venv/bin/python benchmarks/bench_updates.py --only gpu --cpu   # the same steps at test sizes on the CPU
    ... --json                                                      # one JSON object per line

Update times are measured through the real Lightning ``training_step`` (manual optimization, all
optimizers) on synthetic uint8 batches of the right shapes; the breakdown comes from the same
``timeit`` blocks the training loop logs as ``time/*``. With ``--json`` every figure is one object
``{"name": ..., <values>}``; the last line is ``{"name": "summary", ...}`` with the headline keys
(``sampling_ratio_new_vs_old``, ``collector_share_dmc_fast``, ``collector_share_pong``, ...).
"""

from __future__ import annotations

import mlr_lightning  # noqa: F401  (torch stack before dm_control)

import argparse
import json
import statistics
import subprocess
import sys
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
from mlr_lightning.domains import load_config
from mlr_lightning.data.frames import assemble_stacks
from mlr_lightning.data.replay import UniformReplay
from mlr_lightning.data.stream import ExperienceStream, make_collector
from mlr_lightning.domains import domain_of
from mlr_lightning.training.console import quiet_libraries
from mlr_lightning.training.experiment import _as_is

CONF = Path(__file__).resolve().parents[1] / "conf"
SUMMARY: dict[str, float] = {}
FIRST_LOSSES: dict[str, dict[str, float]] = {}  # label -> the losses of its first (untimed) update
JSON = False
# Compiled and CUDA-graph updates against eager: the first update's losses (same weights, batch and
# random draws) within this relative difference (float32 reassociation; 1e-6 is typical).
AGREEMENT_RTOL = 1e-4
# `--only gpu --cpu`: the GPU check's steps at the tests' sizes, as a test of the script itself.
CPU_SIZES = ["env.image_size=24", "env.crop_size=20", "encoder.num_layers=2", "encoder.num_filters=8",
             "sac.hidden_dim=32", "mlr.patch_size=6", "mlr.seq_len=4", "mlr.block_size=2", "mlr.batch_size=3",
             "train.batch_size=8", "trainer.accelerator=cpu"]
CPU_ATARI_SIZES = ["rainbow.hidden_dim=32", "rainbow.num_atoms=11", "mlr.decoder_dim=16", "mlr.seq_len=4",
                   "mlr.block_size=2", "train.batch_size=4", "trainer.accelerator=cpu"]


def report(name: str, text: str, **values) -> None:
    """One figure: a line of text, or with ``--json`` one JSON object."""
    print(json.dumps({"name": name, **values}) if JSON else text, flush=True)


def section(title: str) -> None:
    if not JSON:
        print(f"\n== {title} ==", flush=True)


class StepTimer(pl.Callback):
    """Seconds of each update, and the losses logged by the first."""

    def __init__(self, device: torch.device):
        self.times: list[float] = []
        self.first_losses: dict[str, float] = {}
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def on_train_batch_start(self, *args):
        self.sync()
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, *args):
        self.sync()
        self.times.append(time.perf_counter() - self.t0)
        if len(self.times) == 1:
            self.first_losses = {k: float(v) for k, v in trainer.callback_metrics.items() if k.endswith("loss")}


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


def fit_timed(agent, batch, repeats: int, accelerator: str = "cpu", precision: str = "32-true",
              label: str = "") -> list[float]:
    """Seconds of each update after the first (which includes one-off allocations and compilation);
    the first update's losses go to FIRST_LOSSES[label]."""
    timer = StepTimer(torch.device("cuda" if accelerator == "gpu" else "cpu"))
    loader = DataLoader([batch] * (repeats + 1), batch_size=None, collate_fn=_as_is)
    trainer = pl.Trainer(accelerator=accelerator, devices=1, precision=precision, max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         log_every_n_steps=10**6, callbacks=[timer])
    timeit.erase()
    trainer.fit(agent, loader)
    FIRST_LOSSES[label] = timer.first_losses
    return timer.times[1:]


def time_updates(label: str, cfg, repeats: int, action_dim: int = 1, accelerator: str = "cpu",
                 precision: str = "32-true") -> float:
    torch.manual_seed(0)
    agent = SACMLRAgent(cfg, action_dim)
    timed = fit_timed(agent, synthetic_batch(cfg, action_dim), repeats, accelerator, precision, label)
    parts = {k.split("/")[-1]: v for k, v in timeit.todict().items() if k.startswith("update/")}
    shapes = f"RL batch {cfg.train.batch_size}" + (
        f", MLR {cfg.mlr.batch_size}x{cfg.mlr.seq_len} frames" if cfg.mlr.enabled else "")
    seconds = statistics.median(timed)
    report(f"update/{label}", f"{label:<36} {shapes:<34} {seconds:7.3f} s/update   "
           + "  ".join(f"{k} {v:.3f}" for k, v in parts.items()),
           seconds=seconds, shapes=shapes, precision=precision, compile=cfg.trainer.compile, parts=parts)
    return seconds


# ---------------------------------------------------------------------------------- replay
def filled_replay(num_rows: int, episode_len: int, seq_len: int, device: str = "cpu") -> UniformReplay:
    """A replay of ``num_rows`` synthetic 3x100x100 frames in episodes of ``episode_len`` steps, with
    the paper's batch sizes (512 transitions, 128 windows of ``seq_len``)."""
    replay = UniformReplay(num_rows, frame_stack=3, seq_len=seq_len, batch_size=512, window_batch_size=128)
    replay.store.place(device)
    store = replay.store
    chunk = 5000
    for start in range(0, num_rows, chunk):
        n = min(chunk, num_rows - start)
        step = (torch.arange(start, start + n) % episode_len).reshape(n, 1)
        store.frame_buffer.extend(TensorDict({"pixels": torch.randint(0, 256, (n, 3, 100, 100), dtype=torch.uint8)}, [n],
                                             device=store.device))
        store.buffer.extend(TensorDict({
            "action": torch.zeros(n, 1), "reward": torch.zeros(n, 1), "terminated": torch.zeros(n, 1, dtype=torch.bool),
            "step_count": step, "has_action": torch.ones(n, 1, dtype=torch.bool),
            "trajectory": torch.arange(start, start + n) // episode_len}, [n], device="cpu"))
    return replay


def batch_bytes(batch: TensorDict) -> int:
    return sum(v.numel() * v.element_size() for v in batch.values(True, True))


def replay_sampling(replay: UniformReplay, repeats: int = 7, label: str = "host") -> dict:
    """One update's batch at the paper's sizes: today's path (stacks gathered on the host) against the
    deduplicated one (frames once, into recycled buffers, as the training stream draws them), in turn."""
    sync = torch.cuda.synchronize if replay.store.device.type == "cuda" else (lambda: None)
    replay.recycle_frames(2)
    old, new, assemble = [], [], []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        stacked = replay.sample(stacked=True)
        sync()
        t1 = time.perf_counter()
        deduplicated = replay.sample()
        sync()
        t2 = time.perf_counter()
        new_bytes = batch_bytes(deduplicated)
        assemble_stacks(deduplicated)
        sync()
        t3 = time.perf_counter()
        if i:  # the first round allocates
            old.append(t1 - t0), new.append(t2 - t1), assemble.append(t3 - t2)
    ms = {k: 1000 * statistics.median(v) for k, v in (("old", old), ("new", new), ("assemble", assemble))}
    result = {"old_ms": ms["old"], "new_ms": ms["new"], "assemble_ms": ms["assemble"],
              "ratio_new_vs_old": ms["new"] / ms["old"], "bytes_old": batch_bytes(stacked), "bytes_new": new_bytes,
              "bytes_ratio_new_vs_old": new_bytes / batch_bytes(stacked)}
    report(f"sampling/{label}", f"replay of {len(replay)} frames on {replay.store.device}: one update's batch (512 "
           f"transitions + 128 windows of {replay.seq_len}) today {ms['old']:.1f} ms, deduplicated {ms['new']:.1f} ms "
           f"(x{result['ratio_new_vs_old']:.2f}), {result['bytes_ratio_new_vs_old']:.2f}x the bytes; assembling its "
           f"stacks on {replay.store.device} {ms['assemble']:.1f} ms", **result)
    return result


def replay_snapshot(replay: UniformReplay) -> None:
    """What a full-state snapshot adds: writing the replay (``torch.save`` of its state dict, as
    snapshots do) and reading it back."""
    with tempfile.TemporaryDirectory(dir=CONF.parent) as tmp:  # on the project's disk, not a tmpfs
        path = Path(tmp) / "replay.pt"
        t0 = time.perf_counter()
        with open(path, "wb") as handle:
            torch.save(replay.state_dict(), handle)
        written = time.perf_counter() - t0
        size = path.stat().st_size
        restored = UniformReplay(replay.store.capacity, replay.store.frame_stack, replay.seq_len, 512, 128)
        t0 = time.perf_counter()
        restored.load_state_dict(torch.load(path, weights_only=False))
        restored.sample()  # touch the loaded storage
        loaded = time.perf_counter() - t0
    report("snapshot", f"replay of {len(replay)} frames: snapshot {size / 2**30:.2f} GiB written in {written:.1f} s, "
           f"loaded in {loaded:.1f} s", gib=size / 2**30, write_s=written, load_s=loaded)


# ----------------------------------------------------------------------------- environments
def env_throughput(task: str, action_repeat: int, fast_render: bool, agent_steps: int) -> float:
    """Collector agent steps per second against a bare dm_control loop with the same rendering; returns the share."""
    from mlr_lightning.envs.dmc import split_task
    from mlr_lightning.envs.dmc_pixels import ActionRepeatPixels  # selects the GL backend first

    from dm_control import suite

    domain, name = split_task(task)

    def bare_rate() -> float:
        bare = ActionRepeatPixels(suite.load(domain, name, task_kwargs={"random": 0}), action_repeat, 100, 100, 0, fast_render)
        spec = bare.action_spec()
        bare.reset()
        t0 = time.perf_counter()
        for _ in range(agent_steps):
            if bare.step(spec.generate_value()).last():
                bare.reset()
        return agent_steps / (time.perf_counter() - t0)

    cfg = load_config(CONF / "dmc" / f"{task}.yaml", [f"env.fast_render={str(fast_render).lower()}", "replay.capacity=10000"])
    policy = lambda env: TensorDictModule(lambda pixels: torch.zeros(env.action_spec.shape), in_keys=["pixels"], out_keys=["action"])  # noqa: E731
    bare_rate, rate = best_of_alternating(
        bare_rate, lambda: collected_rate(lambda: domain_of(cfg).make_env(cfg, seed=0), policy,
                                          lambda: domain_of(cfg).make_replay(cfg), agent_steps, action_repeat))
    render = "fast render" if fast_render else "default render"
    report(f"env/{task}/{'fast' if fast_render else 'default'}",
           f"{task:<18} AR {action_repeat} {render:<14} bare dm_control {bare_rate:6.1f} agent steps/s "
           f"({bare_rate * action_repeat:6.0f} env steps/s) | collector+replay {rate:6.1f} agent steps/s "
           f"({rate * action_repeat:6.0f} env steps/s, {rate / bare_rate:.0%} of bare)",
           bare_agent_steps_s=bare_rate, collector_agent_steps_s=rate, share=rate / bare_rate,
           overhead_ms=1000 * (1 / rate - 1 / bare_rate))
    return rate / bare_rate


def best_of_alternating(bare, collected, repeats: int = 3) -> tuple[float, float]:
    """The best of ``repeats`` rates of each loop, run in turn: on this shared two-core machine one
    run of either varies by +-20 % (rendering and emulation times drift), and taking each loop's
    best, measured side by side, compares them under the same conditions."""
    rates = [(bare(), collected()) for _ in range(repeats)]
    return max(r[0] for r in rates), max(r[1] for r in rates)


def collected_rate(make_env, policy, make_replay, agent_steps: int, env_steps_per_agent_step: int) -> float:
    """Agent steps per second of the training stream's interaction: the collector stepping the
    environment and writing each step into the replay, all seed steps (no update runs). Steady
    state: the difference between a run of ``agent_steps`` and one of a fifth of them, which cancels
    building the collector and resetting the environment."""
    def run(steps: int) -> float:
        env = make_env()
        stream = ExperienceStream(lambda start, restarts, writer: make_collector(env, policy(env), writer, steps - start, steps, "cpu"),
                                  make_replay(), steps, steps, 1, env_steps_per_agent_step, 0)
        t0 = time.perf_counter()
        for _ in stream:
            pass
        seconds = time.perf_counter() - t0
        stream.close()
        return seconds

    short = agent_steps // 5
    return (agent_steps - short) / (run(agent_steps) - run(short))


def dmc_collector_shares(agent_steps: int = 1000) -> None:
    shares = [env_throughput(task, repeat, True, agent_steps) for task, repeat in [("cartpole_swingup", 8), ("cheetah_run", 4)]]
    SUMMARY["collector_share_dmc_fast"] = min(shares)


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


def time_atari_updates(label: str, cfg, repeats: int, num_actions: int = 6, accelerator: str = "cpu",
                       precision: str = "32-true") -> float:
    from mlr_lightning.agents.rainbow_mlr import RainbowMLRAgent

    torch.manual_seed(0)
    agent = RainbowMLRAgent(cfg, num_actions)
    timed = fit_timed(agent, synthetic_atari_batch(cfg, num_actions), repeats, accelerator, precision, label)
    parts = {k.split("/")[-1]: v for k, v in timeit.todict().items() if k.startswith("update/") and v > 0}
    m = cfg.mlr
    shapes = f"batch {cfg.train.batch_size}" + (
        f", MLR {cfg.train.batch_size}x{m.seq_len} frames, width {m.decoder_dim or agent.latent_dim}" if m.enabled else "")
    params = sum(p.numel() for p in agent.parameters() if p.requires_grad) / 1e6
    seconds = statistics.median(timed)
    report(f"update/{label}", f"{label:<36} {shapes:<44} {params:6.1f}M trainable {seconds:7.3f} s/update   "
           + "  ".join(f"{k} {v:.3f}" for k, v in parts.items()),
           seconds=seconds, shapes=shapes, params_m=params, precision=precision, compile=cfg.trainer.compile, parts=parts)
    return seconds


def atari_throughput(game: str, agent_steps: int) -> None:
    """Collector (+ prioritized replay) agent steps per second against a bare ale-py loop, same preprocessing."""
    import numpy as np

    from mlr_lightning.domains.atari import ATARI
    from mlr_lightning.envs.atari import make_gym_atari

    def bare_rate() -> float:
        bare = make_gym_atari(game, 4, 84, 30, 0.0, 108_000, terminal_on_life_loss=True, resize="linear")
        bare.reset(seed=0)
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        for _ in range(agent_steps):
            _, _, terminated, truncated, _ = bare.step(int(rng.integers(bare.action_space.n)))
            if terminated or truncated:
                bare.reset()
        return agent_steps / (time.perf_counter() - t0)

    cfg = load_config(CONF / "atari" / f"{game}.yaml", ["replay.capacity=10000"])
    policy = lambda env: TensorDictModule(lambda pixels: env.action_spec.rand(), in_keys=["pixels"], out_keys=["action"])  # noqa: E731
    bare_rate, rate = best_of_alternating(
        bare_rate, lambda: collected_rate(lambda: ATARI.make_env(cfg, 0, train=True), policy, lambda: ATARI.make_replay(cfg),
                                          agent_steps, 1))
    report(f"env/{game}", f"{game:<10} frame skip 4, 84x84 grey, 4 stacked | bare ale-py + AtariPreprocessing "
           f"{bare_rate:6.0f} agent steps/s | TorchRL collector + prioritized replay {rate:6.0f} agent steps/s "
           f"({rate / bare_rate:.0%} of bare)", bare_agent_steps_s=bare_rate, collector_agent_steps_s=rate,
           share=rate / bare_rate, overhead_ms=1000 * (1 / rate - 1 / bare_rate))
    SUMMARY["collector_share_pong"] = rate / bare_rate


def atari_main(args) -> None:
    section("Atari: one Rainbow update (median)")
    quick = CONF / "atari" / "quickstart.yaml"
    time_atari_updates("Atari quickstart Rainbow", load_config(quick, ["mlr.enabled=false"]), repeats=5)
    time_atari_updates("Atari quickstart +MLR", load_config(quick), repeats=5)
    paper = CONF / "atari" / "pong.yaml"
    time_atari_updates("Atari paper Rainbow (Baseline)", load_config(paper, ["mlr.enabled=false"]), repeats=3)
    if not args.skip_paper_mlr:
        time_atari_updates("Atari paper Rainbow+MLR", load_config(paper), repeats=args.atari_mlr_repeats)
    section("Atari environment throughput")
    atari_throughput("pong", agent_steps=2000)


# ------------------------------------------------------------------------------------ sections
def updates_main(args) -> None:
    section("One agent update (median)")
    quick = CONF / "quickstart.yaml"
    time_updates("quickstart SAC", load_config(quick, ["mlr.enabled=false"]), repeats=5)
    eager = time_updates("quickstart SAC+MLR", load_config(quick), repeats=5)
    # The compiled update's speed on this CPU (its equality with eager is a test); the first update compiles.
    compiled = time_updates("quickstart SAC+MLR compiled", load_config(quick, ["trainer.compile=default"]), repeats=5)
    SUMMARY["compiled_speed_ratio_quickstart_cpu"] = eager / compiled
    paper = CONF / "dmc" / "cartpole_swingup.yaml"
    time_updates("paper SAC (Baseline)", load_config(paper, ["mlr.enabled=false"]), repeats=2)
    if not args.skip_paper_mlr:
        time_updates("paper SAC+MLR", load_config(paper), repeats=2)


def data_main(snapshot: bool) -> None:
    section("Replay sampling (paper sizes)")
    replay = filled_replay(100_000, episode_len=126, seq_len=16)
    result = replay_sampling(replay)
    SUMMARY["sampling_ratio_new_vs_old"] = result["ratio_new_vs_old"]
    SUMMARY["sampling_bytes_ratio_new_vs_old"] = result["bytes_ratio_new_vs_old"]
    if snapshot:
        replay_snapshot(replay)
    del replay
    section("Environment throughput (100x100 pixels, camera 0, 3 stacked frames; fast renderer)")
    dmc_collector_shares()


def agreement(eager: str, variant: str) -> bool:
    """Whether ``variant``'s first update gave eager's losses within AGREEMENT_RTOL."""
    reference, losses = FIRST_LOSSES[eager], FIRST_LOSSES[variant]
    worst = max((abs(losses[k] - v) / max(abs(v), 1e-12) for k, v in reference.items()), default=float("inf"))
    agrees = set(losses) == set(reference) and worst <= AGREEMENT_RTOL
    report(f"agreement/{variant}", f"{variant}: first-update losses vs eager, largest relative difference "
           f"{worst:.1e} ({'within' if agrees else 'NOT within'} {AGREEMENT_RTOL:.0e})",
           eager=eager, max_rel_diff=worst, rtol=AGREEMENT_RTOL, agrees=agrees)
    return agrees


def packing(cpu: bool, counts: tuple[int, ...], updates: int) -> None:
    """Aggregate updates/s of ``k`` concurrent paper-config DMC update loops on one device, each its own
    process (as concurrent runs or sweep trials are); each rate is over its timed updates only."""
    for k in counts:
        command = [sys.executable, __file__, "--pack-worker", str(updates)] + (["--cpu"] if cpu else [])
        workers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(k)]
        rates = [json.loads(worker.communicate()[0].strip().splitlines()[-1])["updates_per_s"] for worker in workers]
        if any(worker.returncode for worker in workers):
            raise SystemExit(f"a packing worker failed ({k} concurrent)")
        total = sum(rates)
        report(f"packing/{k}", f"{k} concurrent DMC update loops: {total:.2f} updates/s together "
               f"({', '.join(f'{r:.2f}' for r in rates)} each)", runs=k, updates_per_s=total, per_run=rates)
        SUMMARY[f"packing_updates_per_s_{k}"] = total


def pack_worker(updates: int, cpu: bool) -> None:
    """One packing process: timed paper-size (``--cpu``: test-size) DMC updates; prints its rate."""
    quiet_libraries()
    cfg = load_config(CONF / "dmc" / "cartpole_swingup.yaml", CPU_SIZES if cpu else [])
    seconds = time_updates("packing worker", cfg, repeats=updates, accelerator="cpu" if cpu else "gpu")
    print(json.dumps({"updates_per_s": 1 / seconds}), flush=True)


def gpu_main(cpu: bool = False) -> None:
    """The GPU figures: paper-size updates (fp32, bf16-mixed, compiled; Atari also with CUDA graphs,
    each compiled one checked against eager), sampling with the replay on the host and on the GPU,
    dm_control steps/s with EGL on the GPU, and packing 1, 2 and 4 concurrent runs on the GPU. With
    ``cpu`` the same steps at test sizes (eager instead of compiled, no CUDA graphs, the replay on the
    host twice, the fast renderer only, 1 and 2 runs)."""
    if not cpu and not torch.cuda.is_available():
        raise SystemExit("--only gpu needs a CUDA GPU (--cpu: the same steps at test sizes on the CPU)")
    accelerator, dmc_sizes, atari_sizes = ("cpu", CPU_SIZES, CPU_ATARI_SIZES) if cpu else ("gpu", [], [])
    repeats = 2 if cpu else 10
    name = "CPU (--cpu)" if cpu else torch.cuda.get_device_name()
    report("device", f"device: {name}", device=name, torch=torch.__version__)
    section("Paper-size updates (median)" + (" at test sizes on the CPU" if cpu else " on the GPU"))
    paper = CONF / "dmc" / "cartpole_swingup.yaml"
    fp32 = time_updates("paper SAC+MLR fp32", load_config(paper, dmc_sizes), repeats=repeats, accelerator=accelerator)
    time_updates("paper SAC+MLR bf16-mixed", load_config(paper, dmc_sizes), repeats=repeats, accelerator=accelerator,
                 precision="bf16-mixed")
    # On the CPU inductor compiles C++ kernels for minutes (tests/test_throughput.py checks compiled
    # against eager there): --cpu checks a second eager run instead, which must agree exactly.
    variant = "eager again" if cpu else "compiled"
    compiled = time_updates(f"paper SAC+MLR {variant}",
                            load_config(paper, [*dmc_sizes, f"trainer.compile={'false' if cpu else 'default'}"]),
                            repeats=repeats, accelerator=accelerator)
    agreement("paper SAC+MLR fp32", f"paper SAC+MLR {variant}")
    # Atari: batch 32, two updates per agent step: kernel launches dominate, which CUDA graphs remove.
    atari = CONF / "atari" / "pong.yaml"
    time_atari_updates("Atari paper Rainbow+MLR fp32", load_config(atari, atari_sizes), repeats=repeats,
                       accelerator=accelerator)
    time_atari_updates("Atari paper Rainbow+MLR bf16-mixed", load_config(atari, atari_sizes), repeats=repeats,
                       accelerator=accelerator, precision="bf16-mixed")
    if not cpu:  # CUDA graphs need CUDA
        time_atari_updates("Atari paper Rainbow+MLR compiled+cudagraphs",
                           load_config(atari, ["trainer.compile=default", "trainer.cudagraphs=true"]), repeats=repeats,
                           accelerator=accelerator)
        agreement("Atari paper Rainbow+MLR fp32", "Atari paper Rainbow+MLR compiled+cudagraphs")
    SUMMARY.update({"update_ms_paper_dmc_fp32": 1000 * fp32, "update_ms_paper_dmc_compiled": 1000 * compiled})
    section("Replay sampling, paper batch sizes: replay on the host, then on the device")
    rows = 2_000 if cpu else 100_000
    host = filled_replay(rows, episode_len=126, seq_len=16)
    host_result = replay_sampling(host, repeats=1 if cpu else 7, label="host")
    del host
    device = filled_replay(rows, episode_len=126, seq_len=16, device="cpu" if cpu else "cuda")
    device_result = replay_sampling(device, repeats=1 if cpu else 7, label="device")
    SUMMARY.update({"sampling_ms_host": host_result["new_ms"], "sampling_ms_device": device_result["new_ms"],
                    "sampling_share_of_update_device":
                        (device_result["new_ms"] + device_result["assemble_ms"]) / (1000 * fp32)})
    del device
    section("dm_control with EGL" + ("" if cpu else " on the GPU"))
    for fast in (True,) if cpu else (False, True):  # on the CPU the default renderer takes ~20 ms a frame
        env_throughput("cartpole_swingup", 8, fast, agent_steps=50 if cpu else 500)
    section("Packing: concurrent runs on one " + ("CPU" if cpu else "GPU"))
    packing(cpu, (1, 2) if cpu else (1, 2, 4), updates=2 if cpu else 50)


def main() -> None:
    global JSON
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-paper-mlr", action="store_true", help="skip the paper-size SAC+MLR update (~20 s each)")
    parser.add_argument("--atari", choices=["also", "only", "skip"], default="also", help="the Atari-100k figures")
    parser.add_argument("--atari-mlr-repeats", type=int, default=2, help="timed paper-size Atari MLR updates")
    parser.add_argument("--only", choices=["data", "updates", "gpu"],
                        help="data: sampling and collector figures only; updates: the DMC update times (eager and "
                             "compiled); gpu: the GPU figures")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--cpu", action="store_true", help="with --only gpu: the same steps at test sizes on the CPU")
    parser.add_argument("--pack-worker", type=int, metavar="UPDATES", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pack_worker:
        pack_worker(args.pack_worker, args.cpu)
        return
    JSON = args.json
    quiet_libraries()  # TorchRL logs to stdout, which --json keeps for the figures
    report("machine", f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
           f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}",
           torch=torch.__version__, threads=torch.get_num_threads())
    if args.only == "data":
        data_main(snapshot=False)
        section("Atari environment throughput")
        atari_throughput("pong", agent_steps=2000)
    elif args.only == "updates":
        updates_main(args)
    elif args.only == "gpu":
        gpu_main(args.cpu)
    elif args.atari == "only":
        atari_main(args)
    else:
        updates_main(args)
        data_main(snapshot=True)
        section("Environment throughput, default renderer")
        for task, repeat in [("cartpole_swingup", 8), ("cheetah_run", 4)]:
            env_throughput(task, repeat, False, agent_steps=250)
        if args.atari == "also":
            atari_main(args)
    report("summary", "\n" + "\n".join(f"{k}: {v:.3f}" for k, v in SUMMARY.items()), **SUMMARY)


if __name__ == "__main__":
    main()
