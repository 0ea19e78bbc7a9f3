"""Benchmark (prints figures; not a test): agent update cost, replay sampling and snapshots, environment throughput.

    .venv/bin/python benchmarks/bench_updates.py                    # everything (~10 min on 2 CPU cores)
    .venv/bin/python benchmarks/bench_updates.py --skip-paper-mlr   # without the ~20 s/update cases
    .venv/bin/python benchmarks/bench_updates.py --atari only       # only the Atari-100k figures
    .venv/bin/python benchmarks/bench_updates.py --only data        # sampling and collector figures (~2 min)
    .venv/bin/python benchmarks/bench_updates.py --only updates --skip-paper-mlr   # update times, eager vs compiled
    .venv/bin/python benchmarks/bench_updates.py --only gpu         # the GPU figures (benchmarks/gpu.sh)
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
JSON = False


def report(name: str, text: str, **values) -> None:
    """One figure: a line of text, or with ``--json`` one JSON object."""
    print(json.dumps({"name": name, **values}) if JSON else text, flush=True)


def section(title: str) -> None:
    if not JSON:
        print(f"\n== {title} ==", flush=True)


class StepTimer(pl.Callback):
    def __init__(self, device: torch.device):
        self.times: list[float] = []
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def on_train_batch_start(self, *args):
        self.sync()
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, *args):
        self.sync()
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


def fit_timed(agent, batch, repeats: int, accelerator: str = "cpu", precision: str = "32-true") -> list[float]:
    """Seconds of each update after the first (which includes one-off allocations and compilation)."""
    timer = StepTimer(torch.device("cuda" if accelerator == "gpu" else "cpu"))
    loader = DataLoader([batch] * (repeats + 1), batch_size=None, collate_fn=_as_is)
    trainer = pl.Trainer(accelerator=accelerator, devices=1, precision=precision, max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         log_every_n_steps=10**6, callbacks=[timer])
    timeit.erase()
    trainer.fit(agent, loader)
    return timer.times[1:]


def time_updates(label: str, cfg, repeats: int, action_dim: int = 1, accelerator: str = "cpu",
                 precision: str = "32-true") -> float:
    torch.manual_seed(0)
    agent = SACMLRAgent(cfg, action_dim)
    timed = fit_timed(agent, synthetic_batch(cfg, action_dim), repeats, accelerator, precision)
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
        stream = ExperienceStream(lambda start, writer: make_collector(env, policy(env), writer, steps - start, steps, "cpu"),
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
    timed = fit_timed(agent, synthetic_atari_batch(cfg, num_actions), repeats, accelerator, precision)
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


def gpu_main() -> None:
    """The GPU figures: paper-size updates (fp32, bf16-mixed, compiled), sampling with the replay on the
    host and on the GPU, and dm_control steps/s with EGL on the GPU."""
    if not torch.cuda.is_available():
        raise SystemExit("--only gpu needs a CUDA GPU")
    report("device", f"GPU: {torch.cuda.get_device_name()}", gpu=torch.cuda.get_device_name(), torch=torch.__version__)
    section("Paper-size updates on the GPU (median)")
    paper = CONF / "dmc" / "cartpole_swingup.yaml"
    fp32 = time_updates("paper SAC+MLR fp32", load_config(paper), repeats=10, accelerator="gpu")
    time_updates("paper SAC+MLR bf16-mixed", load_config(paper), repeats=10, accelerator="gpu", precision="bf16-mixed")
    compiled = time_updates("paper SAC+MLR compiled", load_config(paper, ["trainer.compile=default"]), repeats=10,
                            accelerator="gpu")
    # Atari: batch 32, two updates per agent step: kernel launches dominate, which CUDA graphs remove.
    atari = CONF / "atari" / "pong.yaml"
    time_atari_updates("Atari paper Rainbow+MLR fp32", load_config(atari), repeats=10, accelerator="gpu")
    time_atari_updates("Atari paper Rainbow+MLR bf16-mixed", load_config(atari), repeats=10, accelerator="gpu",
                       precision="bf16-mixed")
    time_atari_updates("Atari paper Rainbow+MLR compiled+cudagraphs",
                       load_config(atari, ["trainer.compile=default", "trainer.cudagraphs=true"]), repeats=10,
                       accelerator="gpu")
    SUMMARY.update({"update_ms_paper_dmc_fp32": 1000 * fp32, "update_ms_paper_dmc_compiled": 1000 * compiled})
    section("Replay sampling, paper sizes: replay on the host, then on the GPU (stacks assembled on the GPU)")
    host = filled_replay(100_000, episode_len=126, seq_len=16)
    host_result = replay_sampling(host, label="host")
    del host
    device = filled_replay(100_000, episode_len=126, seq_len=16, device="cuda")
    device_result = replay_sampling(device, label="device")
    SUMMARY.update({"sampling_ms_host": host_result["new_ms"], "sampling_ms_device": device_result["new_ms"],
                    "sampling_share_of_update_device":
                        (device_result["new_ms"] + device_result["assemble_ms"]) / (1000 * fp32)})
    del device
    section("dm_control with EGL on the GPU")
    for fast in (False, True):
        env_throughput("cartpole_swingup", 8, fast, agent_steps=500)


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
    args = parser.parse_args()
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
        gpu_main()
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
