"""Command line: ``python -m mlr_lightning fit --config FILE [key=value ...]``.

Knows about files, arguments and messages; nothing about tensors.
"""

from __future__ import annotations

import argparse
import sys

from mlr_lightning.config import ConfigError, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlr_lightning",
        description="Mask-based Latent Reconstruction (MLR) experiments on PyTorch Lightning and TorchRL.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fit = commands.add_parser("fit", help="train an agent from a config file", description="Train an agent.")
    fit.add_argument("--config", required=True, help="YAML file, e.g. conf/quickstart.yaml or conf/dmc/walker_walk.yaml")
    fit.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. mlr.enabled=false seed=3")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "fit":
        try:
            cfg = load_config(args.config, args.overrides)
        except ConfigError as err:
            print(f"config error: {err}", file=sys.stderr)
            return 2
        from mlr_lightning.envs.dmc import UnknownTaskError
        from mlr_lightning.experiment import fit
        from mlr_lightning.rendering import RenderBackendError

        try:
            run_dir = fit(cfg)
        except (UnknownTaskError, RenderBackendError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"Results: {run_dir} (config.yaml, metrics.csv, checkpoints/last.ckpt)")
    return 0
