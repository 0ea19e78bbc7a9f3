"""Sweep files and their expansion into trials: the one code path behind ``sweep`` and ``grid``.

A sweep is base configs x seeds x override axes, plus overrides every trial shares. Each trial
becomes one ``fit --resume auto`` command with a stable ``run_name`` (experiment, task, variant,
seed), so running the same sweep again, or retrying one trial, continues from its last snapshot
instead of starting over. Everything is validated here, before anything runs: the sweep file's own
keys, and the config of every trial.
"""

from __future__ import annotations

import fnmatch
import glob
import itertools
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from mlr_lightning.config import ConfigError, flatten
from mlr_lightning.domains import domain_of, load_config
from mlr_lightning.run_identity import config_hash
from mlr_lightning.training.tracking import resolve_tracking_uri

SWEEP_KEYS = ("experiment", "configs", "exclude", "seeds", "axes", "overrides", "resources", "max_failures", "budgets",
              "gpu_hours_per_trial")
RESOURCE_KEYS = ("cpus", "gpus")
# Trial keys the sweep sets itself, and the sweep key to use instead.
RESERVED_TRIAL_KEYS = {"seed": "seeds", "run_name": "none: each trial's run_name is derived from it",
                       "tracking.experiment": "experiment"}
# Axes already spelled out in every trial name.
NAMED_AXES = ("env.task", "mlr.enabled")


class SweepError(ConfigError):
    """A problem with a sweep file or a trial's config, phrased for the person who wrote it."""


@dataclass(frozen=True)
class Trial:
    """One ``fit`` of the sweep."""

    name: str  # the run_name: stable, so a re-run or a retry resumes this trial's run directory
    config: str  # base config file, as given
    overrides: tuple[str, ...]  # everything after --config, run_name first and seed last
    variant: tuple[str, ...]  # the axis values and the seed that tell this trial apart
    output_dir: Path  # absolute
    final_env_steps: int  # train.num_env_steps
    final_agent_steps: int  # the stream counter of a completed run
    cfg: DictConfig | None = field(default=None, compare=False, repr=False)  # resolved, as its fit will load it

    @property
    def config_hash(self) -> str:
        """The identity of the run this trial makes (:mod:`mlr_lightning.run_identity`)."""
        return config_hash(self.cfg)

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name

    def argv(self, python: str = "python") -> list[str]:
        return [python, "-m", "mlr_lightning", "fit", "--config", self.config, "--resume", "auto", *self.overrides]

    def command(self) -> str:
        return shlex.join(self.argv())


@dataclass
class Sweep:
    """A parsed sweep file (or ``grid`` command line), before expansion."""

    source: str
    configs: list[str]
    seeds: list[int]
    axes: dict[str, list[str]] = field(default_factory=dict)  # dotted key -> override values, as text
    overrides: list[str] = field(default_factory=list)  # key=value shared by every trial
    experiment: str | None = None  # None: the configs' own tracking.experiment
    cpus: float = 1.0
    gpus: float = 0.0
    max_failures: int = 2
    budgets: list[int] | None = None  # for compare; None: each trial's train.num_env_steps
    gpu_hours_per_trial: float | None = None  # a stated cost per trial, for --dry-run's GPU-hours; None: not stated


@dataclass
class SweepPlan:
    """A sweep with every trial expanded and validated."""

    sweep: Sweep
    trials: list[Trial]
    experiment: str
    output_dir: Path
    tracking_uri: str | None  # None: the trials do not log to MLflow

    @property
    def budgets(self) -> list[int]:
        """Environment-step budgets for ``compare``: the sweep's, else where the trials end."""
        return self.sweep.budgets or sorted({t.final_env_steps for t in self.trials})


# ------------------------------------------------------------------------------------ reading


def load_sweep(path: str | Path, items: Sequence[str] = ()) -> tuple[Sweep, list[str]]:
    """A sweep file plus command-line ``key=value`` items -> the sweep, and the items that are trial
    overrides. Items whose first key is a sweep key (``seeds=[1,2]``, ``resources.gpus=0.5``)
    change the sweep; all others (``train.num_env_steps=500000``) are shared by every trial."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {path} does not exist")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    except Exception as err:  # noqa: BLE001  (YAML and OmegaConf raise many types for bad text)
        raise SweepError(f"sweep file {path} is not valid YAML: {' '.join(str(err).split())[:200]}") from None
    if not isinstance(raw, dict):
        raise SweepError(f"sweep file {path}: expected a mapping of {', '.join(SWEEP_KEYS)}")
    trial_items = []
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep:
            raise SweepError(f"{item!r} is not of the form key=value (e.g. seeds=[1,2] or train.num_env_steps=500000)")
        if key.split(".")[0] in SWEEP_KEYS:
            _merge_item(raw, item)
        else:
            trial_items.append(item)
    return parse_sweep(raw, str(path), default_experiment=path.stem), trial_items


def _merge_item(raw: dict, item: str) -> None:
    (key, value), = _parse_item(item, "command line").items()
    if key in ("axes", "overrides") and isinstance(value, dict):
        raw[key] = {**_as_mapping(raw.get(key), key), **flatten(value)}
    elif key == "resources" and isinstance(value, dict) and isinstance(raw.get(key), dict):
        raw[key] = {**raw[key], **value}
    else:
        raw[key] = value


def parse_sweep(raw: dict, source: str, default_experiment: str | None = None) -> Sweep:
    """Checks the sweep's own keys; each message names the key and what is allowed."""
    unknown = sorted(set(raw) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(f"{source}: unknown key '{unknown[0]}'; keys allowed in a sweep file: {', '.join(SWEEP_KEYS)}")
    if "configs" not in raw:
        raise SweepError(f"{source}: missing 'configs': list the base config files (or a glob such as conf/dmc/*.yaml)")
    configs = resolve_configs(raw["configs"], raw.get("exclude") or [], source)
    seeds = raw.get("seeds", [1])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SweepError(f"{source}: seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"{source}: seeds lists a seed twice: {seeds}")
    axes = {}
    for key, values in _as_mapping(raw.get("axes"), "axes").items():
        if not isinstance(values, list):
            values = [values]
        if not values:
            raise SweepError(f"{source}: axes.{key} is empty; give it at least one value, e.g. {key}: [true, false]")
        _check_not_reserved(key, f"{source}: axes.{key}")
        axes[key] = [override_value(v) for v in values]
    raw_overrides = raw.get("overrides") or []
    if isinstance(raw_overrides, list):
        overrides = [str(item) for item in raw_overrides]
    else:
        overrides = [f"{k}={override_value(v)}" for k, v in _as_mapping(raw_overrides, "overrides").items()]
    resources = raw.get("resources") or {}
    if not isinstance(resources, dict):
        raise SweepError(f"{source}: resources must be a mapping such as {{cpus: 2, gpus: 0.25}}")
    unknown = sorted(set(resources) - set(RESOURCE_KEYS))
    if unknown:
        raise SweepError(f"{source}: unknown key 'resources.{unknown[0]}'; keys allowed under 'resources': cpus, gpus")
    cpus, gpus = resources.get("cpus", 1), resources.get("gpus", 0)
    for key, value in (("cpus", cpus), ("gpus", gpus)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise SweepError(f"{source}: resources.{key} must be a number >= 0, got {value!r}")
    if cpus <= 0:
        raise SweepError(f"{source}: resources.cpus must be > 0 (CPUs reserved per trial), got {cpus}")
    if gpus > 1 and gpus != int(gpus):
        raise SweepError(f"{source}: resources.gpus ({gpus}) above 1 must be a whole number of GPUs (Ray's rule)")
    max_failures = raw.get("max_failures", 2)
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 0:
        raise SweepError(f"{source}: max_failures must be an integer >= 0 (retries per trial), got {max_failures!r}")
    budgets = raw.get("budgets")
    if budgets is not None and (not isinstance(budgets, list) or not budgets
                                or not all(isinstance(b, int) and b > 0 for b in budgets)):
        raise SweepError(f"{source}: budgets must be a list of environment-step counts, e.g. [100000, 500000]")
    gpu_hours = raw.get("gpu_hours_per_trial")
    if gpu_hours is not None and (isinstance(gpu_hours, bool) or not isinstance(gpu_hours, (int, float)) or gpu_hours <= 0):
        raise SweepError(f"{source}: gpu_hours_per_trial must be a number > 0 (GPU-hours one trial costs), got {gpu_hours!r}")
    experiment = raw.get("experiment", default_experiment)
    if experiment is not None and (not isinstance(experiment, str) or not experiment.strip()):
        raise SweepError(f"{source}: experiment must be a non-empty MLflow experiment name")
    sweep = Sweep(source=source, configs=configs, seeds=seeds, axes=axes, overrides=overrides, experiment=experiment,
                  cpus=float(cpus), gpus=float(gpus), max_failures=max_failures, budgets=budgets,
                  gpu_hours_per_trial=None if gpu_hours is None else float(gpu_hours))
    for item in overrides:
        _check_trial_override(item, f"{source}: overrides")
    return sweep


def grid_sweep(config: str, seeds: list[int], vary: list[str], experiment: str | None, overrides: list[str]) -> Sweep:
    """The sweep of a ``grid`` command line: one config, ``--seeds``, ``--vary key=v1,v2`` axes."""
    axes = {}
    for item in vary:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise SweepError(f"--vary {item!r} is not of the form key=value1,value2")
        _check_not_reserved(key, f"--vary {key}")
        axes[key] = values.split(",")
    for item in overrides:
        _check_trial_override(item, "grid")
    return Sweep(source="grid", configs=[config], seeds=list(seeds), axes=axes, overrides=list(overrides),
                 experiment=experiment)


def resolve_configs(entries: Any, exclude: Any, source: str) -> list[str]:
    """Files and globs (relative to the current directory), minus ``exclude`` (names or globs)."""
    if isinstance(entries, str):
        entries = [entries]
    if isinstance(exclude, str):
        exclude = [exclude]
    if not isinstance(entries, list) or not entries:
        raise SweepError(f"{source}: configs must be a non-empty list of config files or globs")
    found: list[str] = []
    for entry in map(str, entries):
        if glob.has_magic(entry):
            matches = sorted(glob.glob(entry))
            if not matches:
                raise SweepError(f"{source}: configs: {entry} matches no file (paths are relative to {os.getcwd()})")
        elif not Path(entry).is_file():
            raise SweepError(f"{source}: configs: {entry} does not exist (paths are relative to {os.getcwd()})")
        else:
            matches = [entry]
        found.extend(m for m in matches if m not in found)

    def excluded(path: str) -> bool:
        return any(fnmatch.fnmatch(Path(path).stem, str(p)) or fnmatch.fnmatch(path, str(p)) for p in exclude)

    configs = [c for c in found if not excluded(c)]
    if not configs:
        raise SweepError(f"{source}: configs: no file left after exclude={list(exclude)}")
    return configs


# ---------------------------------------------------------------------------------- expansion


def expand(sweep: Sweep, trial_overrides: Sequence[str] = ()) -> SweepPlan:
    """Every trial of the sweep, each config validated, with stable unique names.

    A trial's config is validated once per (base config, axis values): the seeds of a variant
    differ only in ``seed``, which the sweep has already checked to be an integer (validating all
    520 Atari trials one by one would take 15 s instead of 1.5 s).
    """
    for item in trial_overrides:
        _check_trial_override(item, "command line")
    shared = [*sweep.overrides, *trial_overrides]
    experiment_override = [f"tracking.experiment={sweep.experiment}"] if sweep.experiment else []
    axis_keys = list(sweep.axes)
    combos = list(itertools.product(*(([f"{k}={v}" for v in sweep.axes[k]]) for k in axis_keys)))
    variants = []  # (config, axis overrides, validated cfg)
    for config in sweep.configs:
        for combo in combos:
            try:
                cfg = load_config(config, [*shared, *experiment_override, *combo, f"seed={sweep.seeds[0]}"])
            except ConfigError as err:
                where = f"{config}" + (f" with {' '.join(combo)}" if combo else "")
                raise SweepError(f"trial {where}: {err}") from None
            variants.append((config, combo, cfg))
    check_tasks([cfg for _, _, cfg in variants])
    _check_shared_settings([cfg for _, _, cfg in variants], sweep)

    first = variants[0][2]
    experiment = sweep.experiment or first.tracking.experiment
    names = _variant_names(experiment, variants, axis_keys)
    trials = []
    for (config, combo, cfg), base_name in zip(variants, names):
        per_agent_step = domain_of(cfg).env_steps_per_agent_step(cfg)
        for seed in sweep.seeds:
            name = f"{base_name}-s{seed}"
            seeded = cfg.copy()
            seeded.seed, seeded.run_name = seed, name
            trials.append(Trial(
                name=name,
                config=config,
                overrides=(f"run_name={name}", *experiment_override, *shared, *combo, f"seed={seed}"),
                variant=(*combo, f"seed={seed}"),
                output_dir=Path(cfg.output_dir).resolve(),
                final_env_steps=cfg.train.num_env_steps,
                final_agent_steps=cfg.train.num_env_steps // per_agent_step,
                cfg=seeded,
            ))
    uri = resolve_tracking_uri(first.tracking.uri, first.output_dir) if first.tracking.mlflow else None
    return SweepPlan(sweep=sweep, trials=trials, experiment=experiment, output_dir=Path(first.output_dir).resolve(),
                     tracking_uri=uri)


def check_tasks(cfgs) -> None:
    """An unknown task or game fails here, not in the middle of the sweep."""
    seen = set()
    for cfg in cfgs:
        key = (cfg.domain, cfg.env.task, cfg.env.get("camera_id"))
        if key not in seen:
            seen.add(key)
            try:
                domain_of(cfg).check_task(cfg)
            except ValueError as err:
                raise SweepError(str(err)) from None


def _check_shared_settings(cfgs, sweep: Sweep) -> None:
    """Trials log into one experiment of one store, and each runs on one node."""
    for key, values in (("output_dir", {str(Path(c.output_dir).resolve()) for c in cfgs}),
                        ("tracking.uri", {c.tracking.uri for c in cfgs}),
                        ("tracking.mlflow", {c.tracking.mlflow for c in cfgs})):
        if len(values) > 1:
            raise SweepError(f"{key} differs between trials ({sorted(map(str, values))}): a sweep's trials share "
                             "one output directory and MLflow store; set it in overrides, not per config or axis")
    for c in cfgs:
        if c.trainer.num_nodes > 1:
            raise SweepError("trainer.num_nodes > 1: a sweep trial runs on one node; sweep over multi-GPU "
                             "trials with trainer.devices and resources.gpus")
        if c.trainer.accelerator in ("gpu", "cuda") and sweep.gpus == 0:
            raise SweepError(f"resources.gpus is 0 but the trials set trainer.accelerator=gpu: give each trial a GPU "
                             f"share in {sweep.source} (e.g. resources: {{gpus: 0.25}})")
        if c.trainer.devices > 1 and c.trainer.accelerator != "cpu" and sweep.gpus < c.trainer.devices:
            raise SweepError(f"resources.gpus ({sweep.gpus:g}) is less than trainer.devices ({c.trainer.devices}): "
                             "a multi-GPU trial needs that many whole GPUs")


def _variant_names(experiment: str, variants, axis_keys: list[str]) -> list[str]:
    """``<experiment>-<task>-<mlr|baseline>[-<other axis values>]``; the config's file name is added
    where two configs would otherwise give the same name."""
    def name(config: str, combo, cfg, with_config: bool) -> str:
        parts = [experiment] + ([Path(config).stem] if with_config else []) + [cfg.env.task]
        parts.append("mlr" if cfg.mlr.enabled else "baseline")
        for key, item in zip(axis_keys, combo):
            if key not in NAMED_AXES:
                parts.append(f"{key.rsplit('.', 1)[-1]}_{item.partition('=')[2]}")
        return _slug("-".join(parts))

    names = [name(*v, with_config=False) for v in variants]
    clashing = {n for n in names if names.count(n) > 1}
    names = [name(*v, with_config=True) if n in clashing else n for v, n in zip(variants, names)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SweepError(f"configs: two trials would share the run name {duplicates[0]!r}; make the configs or axes "
                         "differ in what they set")
    return names


# ------------------------------------------------------------------------------------ helpers


def override_value(value: Any) -> str:
    """A YAML value as the text of a ``key=value`` override (parsed back by OmegaConf)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        raise SweepError(f"axis or override value {value!r} is a mapping; give dotted keys instead (e.g. mlr.lr: 1e-4)")
    return str(value)


def _check_trial_override(item: str, where: str) -> None:
    key, sep, _ = item.partition("=")
    if not sep:
        raise SweepError(f"{where}: {item!r} is not of the form key=value")
    _check_not_reserved(key, f"{where}: {key}")
    _parse_item(item, where)


def _parse_item(item: str, where: str) -> dict:
    """``a.b=[1,2]`` -> ``{"a": {"b": [1, 2]}}``, as OmegaConf reads overrides."""
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([item]))
    except Exception as err:  # noqa: BLE001  (YAML and OmegaConf raise many types for bad text)
        reason = " ".join(str(err).split())[:200]
        raise SweepError(f"{where}: cannot read {item!r} as key=value ({reason}); lists are written "
                         "key=[a,b] and nested keys key.sub=value") from None


def _check_not_reserved(key: str, where: str) -> None:
    if key in RESERVED_TRIAL_KEYS:
        raise SweepError(f"{where}: the sweep sets {key} per trial; use {RESERVED_TRIAL_KEYS[key]}")


def _as_mapping(value: Any, key: str) -> dict:
    if value is None:
        return {}
    if isinstance(value, list):  # ["key=value", ...]
        pairs = [str(v).partition("=") for v in value]
        return {k: v for k, _, v in pairs}
    if not isinstance(value, dict):
        raise SweepError(f"{key} must be a mapping of dotted config keys, e.g. {key}: {{mlr.enabled: [true, false]}}")
    return flatten(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)
