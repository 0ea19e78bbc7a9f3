"""Benchmark (prints figures; not a test): evaluation wall time on 1 vs N environments stepped together.

    .venv/bin/python benchmarks/bench_eval.py                       # DMC cartpole_swingup, the paper's agent
    .venv/bin/python benchmarks/bench_eval.py --episodes 10 --num-envs 1 5 10 --device cuda

An untrained paper-size agent (the returns do not matter, the cost does) evaluates ``--episodes``
episodes with :func:`mlr_lightning.training.evaluation.evaluate`; the figure is the wall time of the
whole evaluation and of its policy calls alone. Every environment steps in this process: batching
saves policy calls (one per step instead of one per environment and step), not simulation or rendering.
"""

from __future__ import annotations

import mlr_lightning  # noqa: F401  (torch stack before dm_control)

import argparse
import json
import os
import time

import torch

from mlr_lightning.domains import domain_of, load_config
from mlr_lightning.training.evaluation import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="conf/dmc/cartpole_swingup.yaml")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    cfg = load_config(args.config, ["trainer.accelerator=cpu"])
    domain = domain_of(cfg)
    device = torch.device(args.device)
    envs = [domain.make_env(cfg, cfg.seed, train=False) for _ in range(max(args.num_envs))]
    agent = domain.make_agent(cfg, envs[0]).to(device).eval()
    policy_seconds = 0.0

    def timed_policy(pixels, noise):
        nonlocal policy_seconds
        start = time.perf_counter()
        actions = agent.policy(pixels, noise)
        if device.type == "cuda":
            torch.cuda.synchronize()
        policy_seconds += time.perf_counter() - start
        return actions

    print(json.dumps({"name": "machine", "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                      "loadavg_1min": os.getloadavg()[0], "device": str(device), "config": args.config,
                      "episodes": args.episodes}))
    for num_envs in args.num_envs:
        policy_seconds = 0.0
        start = time.perf_counter()
        returns = evaluate(envs[:num_envs], timed_policy, seed=0, env_steps=0, num_episodes=args.episodes,
                           device=device)
        seconds = time.perf_counter() - start
        print(json.dumps({"name": "evaluation", "num_envs": num_envs, "seconds": round(seconds, 2),
                          "policy_seconds": round(policy_seconds, 2), "mean_return": round(sum(returns) / len(returns), 3),
                          "loadavg_1min": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
