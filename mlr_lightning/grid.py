"""Seeds x overrides grids: the runs of one comparison, in one MLflow experiment."""

from __future__ import annotations

import itertools
import shlex


def expand_grid(seeds: list[int], vary: list[str]) -> list[list[str]]:
    """``vary=["mlr.enabled=true,false"]``, ``seeds=[1, 2]`` -> one override list per run (4 here)."""
    axes = []
    for item in vary:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ValueError(f"--vary {item!r} is not of the form key=value1,value2")
        axes.append([f"{key}={v}" for v in values.split(",")])
    axes.append([f"seed={s}" for s in seeds])
    return [list(combo) for combo in itertools.product(*axes)]


def fit_command(config: str, overrides: list[str]) -> str:
    return shlex.join(["python", "-m", "mlr_lightning", "fit", "--config", config, *overrides])
