"""The per-game Atari-100k table: reference scores, the paper's MLR and Baseline, and our runs.

Our runs are read from run directories (``config.yaml`` with ``domain: atari`` and the final
``eval/return_mean`` in ``metrics.csv``), so the table needs no tracking server. Scores are raw game
scores and human-normalised scores, HNS = (score - random) / (human - random); the last rows give the
mean and median HNS over the games present.
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

import pandas as pd
import yaml

from mlr_lightning.reporting.compare import _markdown
from mlr_lightning.domains.atari import ATARI, REFERENCE, RESULTS, human_normalized_score


def collect_runs(root: Path) -> dict[tuple[str, str], list[float]]:
    """(game, "MLR" | "Baseline") -> final evaluation returns of the Atari runs under ``root``."""
    runs: dict[tuple[str, str], list[float]] = {}
    for config in sorted(Path(root).glob("*/config.yaml")):
        cfg = yaml.safe_load(config.read_text())
        metrics = config.parent / "metrics.csv"
        if cfg.get("domain") != ATARI.name or not metrics.is_file():
            continue
        finals = [(float(r["step"]), float(r["eval/return_mean"])) for r in csv.DictReader(metrics.open())
                  if r.get("eval/return_mean")]
        if not finals or max(s for s, _ in finals) < cfg["train"]["num_env_steps"]:
            continue  # unfinished run
        algorithm = "MLR" if cfg["mlr"]["enabled"] else "Baseline"
        runs.setdefault((cfg["env"]["task"], algorithm), []).append(max(finals)[1])
    return runs


def atari_table(runs: dict[tuple[str, str], list[float]] | None = None) -> pd.DataFrame:
    runs = runs or {}
    rows = []
    for game, (random, human) in REFERENCE.items():
        row = {"game": game, "random": random, "human": human}
        for algorithm in ("Baseline", "MLR"):
            paper = RESULTS[algorithm][game]
            row[f"paper {algorithm}"] = paper
            row[f"paper {algorithm} HNS"] = human_normalized_score(game, paper)
            ours = runs.get((game, algorithm))
            row[f"ours {algorithm}"] = statistics.fmean(ours) if ours else math.nan
            row[f"ours {algorithm} HNS"] = human_normalized_score(game, row[f"ours {algorithm}"]) if ours else math.nan
            row[f"ours {algorithm} runs"] = len(ours or [])
        rows.append(row)
    table = pd.DataFrame(rows)
    hns = [c for c in table.columns if c.endswith("HNS")]
    blank = {c: "" for c in table.columns}
    summary = [blank | {"game": "mean HNS", **table[hns].mean().to_dict()},
               blank | {"game": "median HNS", **table[hns].median().to_dict()}]
    return pd.concat([table.astype(object), pd.DataFrame(summary)], ignore_index=True)


def format_table(table: pd.DataFrame, with_runs: bool) -> str:
    columns = [c for c in table.columns if with_runs or not c.startswith("ours")]
    return _markdown(table[columns])
