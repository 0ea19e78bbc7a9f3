"""A run's identity is its config: a canonical hash of the keys that change its results.

Two runs with the same hash trained the same experiment, whatever their names, output paths or
logging cadence. The sweep decides "finished" by it (run name *and* hash), ``compare`` never pools or
supersedes across it, and ``fit`` records it as the MLflow tag ``config_hash`` and in
``<run_dir>/config_hash``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mlr_lightning.config import RESUMABLE_CHANGES, config_differences, flatten, replace_text

# Keys that do not change what a run learns or scores: the bookkeeping a resume may change (names,
# paths, cadences, compilation, where the replay lives, where the run is tracked).
NON_RESULT_KEYS = RESUMABLE_CHANGES
HASH_TAG = "config_hash"  # the MLflow tag
HASH_FILE = "config_hash"  # in the run directory, beside config.yaml
# An MLflow tag on a run whose sweep trial was started afresh with another config (sweep --restart-changed).
REPLACED_TAG = "replaced"


def result_config(cfg: DictConfig) -> dict:
    """The resolved config as ``{"dotted.key": value}``, less :data:`NON_RESULT_KEYS`."""
    flat = flatten(OmegaConf.to_container(cfg, resolve=True))
    return {k: v for k, v in flat.items() if k not in NON_RESULT_KEYS}


def config_hash(cfg: DictConfig) -> str:
    """16 hex digits of the SHA-256 of :func:`result_config` as sorted JSON."""
    text = json.dumps(result_config(cfg), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def result_differences(saved: DictConfig, current: DictConfig, schema: type) -> list[str]:
    """``"key: old -> new"`` for the result-affecting keys whose values differ (``schema``: the domain's)."""
    return [d for d in config_differences(saved, current, schema) if d.split(":", 1)[0] not in NON_RESULT_KEYS]


def write_config_hash(cfg: DictConfig, run_dir: Path) -> None:
    """``<run_dir>/config_hash``, replaced atomically (a crash leaves the old file or the new one)."""
    replace_text(Path(run_dir) / HASH_FILE, config_hash(cfg) + "\n")
