"""Configuration: the strict loader, the schema every domain shares, and the checks of shared keys.

This module knows no domain. Each domain (:mod:`mlr_lightning.domains`) owns its schema dataclass
(built on :class:`RunConfig` and the shared sections below), its bounds and its cross-field checks;
the loader is handed the registry of domains and picks the schema by the ``domain`` key. Every default
is the value of the official MLR code unless a comment names a deliberate deviation.

Loading is strict: an unknown key, a value of the wrong type or an inconsistent combination raises
:class:`ConfigError` naming the key and what is allowed, before anything is built.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, OmegaConfBaseException,
                              ValidationError)


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the config."""


@dataclass
class MLRBaseConfig:
    """What MLR is in both domains: the window, the cube mask, the decoder, the momentum targets."""

    enabled: bool = True  # false gives the paper's Baseline and computes nothing of MLR
    seq_len: int = 16  # K: the paper's results use 16 (DMC's shipped task YAMLs say 6, its README command 16)
    mask_ratio: float = 0.5
    patch_size: int = MISSING  # pixels, on the image_size x image_size frame (before any crop)
    block_size: int = 8  # temporal length of a mask cube; 4 for cartpole_swingup and reacher_easy
    # Deviation switch (an ablation the paper does not run): one mask per sequence instead of one
    # mask per update shared by the batch (paper).
    per_sample_mask: bool = False
    num_attn_layers: int = 2
    num_heads: int = 1
    mlp_ratio: float = 2.0
    max_seq_positions: int = 128  # length of the sinusoidal position table
    momentum_tau: float = MISSING  # target encoder/projection moving-average rate
    normalize_eps: float = 1e-3  # eps of F.normalize in the loss, as in the official code
    # The paper's ablation axes (docs/ablations.md); the defaults are the paper's MLR.
    mask_strategy: str = "cube"  # cube | spatial (a pattern per frame) | temporal (whole frames) | tube (one pattern)
    mask_space: str = "pixel"  # pixel | feature (the same mask on the encoder's last conv map)
    target: str = "latent"  # latent (momentum latents) | pixel (a deconv decoder reconstructs the masked pixels)
    action_tokens: bool = True  # false: the decoder sees state tokens only (the paper's NoAction run)
    target_encoder: str = "momentum"  # momentum | online (the online encoder, stop-gradient: tau = 1)
    loss: str = "cosine"  # cosine (2 - 2 cos) | mse, between the projections (latent target)




@dataclass
class TrainConfig:
    num_env_steps: int = 100_000  # the x-axis, in the domain's environment steps (DMC: agent steps x action_repeat)
    init_steps: int = 1000  # agent steps of uniformly random actions before the first update
    batch_size: int = 512  # transitions per RL update
    updates_per_step: int = 1  # updates after each agent step
    # A crashing environment (a renderer failure, say) is rebuilt up to this many times per run.
    max_env_restarts: int = 10


@dataclass
class EvalConfig:
    every_env_steps: int = 5000  # 0: only at the end of training
    num_episodes: int = 10
    seed_offset: int = 100  # evaluation episodes are seeded from seed + seed_offset, the env step and their index
    num_envs: int = 1  # environments stepped together, one batched policy call per step; returns do not depend on it


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: int = 1  # per node; every device is a rank with its own collector and replay
    num_nodes: int = 1
    strategy: str = "auto"  # "auto" (one device) or "ddp" (gradients averaged over ranks)
    precision: str = "32-true"
    checkpoint_every_updates: int = 10_000
    keep_checkpoints: int = 2  # newest full-state snapshots kept in <run_dir>/checkpoints
    log_every_updates: int = 50
    # Rank r seeds its environment and its sampling with seed + r * rank_seed_stride (rank 0: seed).
    rank_seed_stride: int = 1000
    # A snapshot is "good" only if every parameter is finite and at most this in magnitude: a run
    # that diverges stops before it overwrites its last good snapshot (healthy weights are O(1)).
    max_abs_weight: float = 1.0e4
    # torch.compile the networks of the update: false, "default" or "max-autotune" (true = "default").
    # Random draws stay eager's (inductor's fallback_random), so a compiled run samples the same noise.
    compile: bool | str = False
    # CUDA graphs for the compiled networks (torch.compile's cudagraph trees): GPU only, needs compile.
    cudagraphs: bool = False
    # The finite-loss guard synchronises with the device every this many updates (1: every update,
    # the paper-safe default). Any value still names the first non-finite update and loss and never
    # lets a snapshot hold non-finite weights; N > 1 stops a diverged run up to N - 1 updates later.
    finite_check_every: int = 1


@dataclass
class TrackingConfig:
    mlflow: bool = True
    # None: $MLFLOW_TRACKING_URI if set, else an embedded sqlite store at <output_dir>/mlflow.db.
    uri: str | None = None
    experiment: str = "mlr_lightning"
    # Final checkpoints up to this size are uploaded as MLflow artifacts; larger ones are recorded by path.
    max_checkpoint_artifact_mb: float = 512.0
    video: bool = True  # a GIF of one deterministic evaluation episode at the end


@dataclass
class RunConfig:
    """What every experiment has, whatever its domain."""

    seed: int = 1
    output_dir: str = "runs"  # each run gets output_dir/<run_name>
    run_name: str | None = None  # default: <task>-<mlr|baseline>-s<seed>-<timestamp>
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
STRATEGIES = ("auto", "ddp")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
# Keys a resumed run may change: they affect bookkeeping, not the experiment. The tracking settings
# among them let a run whose MLflow store moved, or broke, continue into another one (or into none).
RESUMABLE_CHANGES = ("run_name", "output_dir", "trainer.checkpoint_every_updates", "trainer.keep_checkpoints",
                     "trainer.log_every_updates", "trainer.compile", "trainer.cudagraphs", "trainer.finite_check_every",
                     "replay.device", "tracking.mlflow", "tracking.uri", "tracking.experiment",
                     "tracking.max_checkpoint_artifact_mb", "tracking.video")
# Optimiser settings a resume may change when the user names them (``fit --resume ... --allow-change KEY``)
# are the domain's ``optimizer_keys``, e.g. to continue a diverging run with a smaller learning rate.
MAX_SEED = 2**32 - 1  # numpy's (and so Lightning's) seed range
COMPILE_MODES = (False, True, "default", "max-autotune")


class DomainSchema(Protocol):
    """What the loader needs of a domain (:class:`mlr_lightning.domains.Domain` has more)."""

    name: str
    schema: type  # a dataclass built on RunConfig: every key with its paper default
    bounds: Mapping[str, tuple]  # bounds of the domain's own keys, as in COMMON_BOUNDS

    def validate(self, cfg: DictConfig) -> None:
        """Cross-field checks of the domain's keys; raise ConfigError naming the key."""


def load_config(domains: Mapping[str, DomainSchema], default_domain: str,
                paths: str | Path | Sequence[str | Path] | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Schema defaults <- YAML files (merged in order) <- ``key=value`` overrides, then :func:`validate`.

    ``domains`` maps each ``domain`` value to its schema; the last ``domain`` key of the sources picks
    it (``default_domain`` when none names one). :func:`mlr_lightning.domains.load_config` passes the registry.
    """
    if paths is None:
        paths = []
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    sources: list[tuple[str, Any]] = [(str(path), read_yaml(Path(path))) for path in paths]
    if overrides:
        sources.append(("command line", _parse_overrides(overrides)))
    domain = domains[_domain_name(sources, domains, default_domain)]
    schema = domain.schema
    cfg = OmegaConf.structured(schema)
    for origin, source in sources:
        _check_sections(cfg, source, origin)
        try:
            cfg = OmegaConf.merge(cfg, source)
        except (ConfigKeyError, ConfigAttributeError) as err:
            raise ConfigError(_unknown_key_message(err, origin, schema)) from None
        except ValidationError as err:
            raise ConfigError(_type_message(err, origin)) from None
    try:
        validate(cfg, domain)
    except OmegaConfBaseException as err:  # an interpolation such as ${oc.env:NAME} that does not resolve
        raise ConfigError(f"{getattr(err, 'full_key', None) or 'config'}: {str(err).splitlines()[0]}") from None
    return cfg


def read_yaml(path: Path) -> DictConfig:
    """One config file, which must hold a mapping; a malformed file names the file, line and column."""
    if not path.is_file():
        raise ConfigError(f"config file {path} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read ({err.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(f"config file {path}, line {line}: byte 0x{data[err.start]:02x} is not UTF-8 text; "
                          "save the file as UTF-8") from None
    try:
        content = OmegaConf.load(io.StringIO(text))
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path}, {_yaml_problem(err, text)}") from None
    except OSError:  # OmegaConf's answer to a lone value such as '42'
        content = None
    if not isinstance(content, DictConfig) or not content:
        what = "a list" if isinstance(content, ListConfig) else "a single value" if content is None else "no settings"
        raise ConfigError(f"config file {path} holds {what} at the top level; it must map keys to values, "
                          "e.g. 'seed: 1' or 'env:' followed by indented keys")
    return content


def _yaml_problem(err: yaml.YAMLError, text: str) -> str:
    """'line L, column C: what' for PyYAML's multi-line messages."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if mark is None:
        return f"not valid YAML: {' '.join(str(err).split())}"
    problem = getattr(err, "problem", None) or "not valid YAML"
    line = text.splitlines()[mark.line] if mark.line < len(text.splitlines()) else ""
    if "\t" in line[: mark.column + 1]:
        problem = "a tab character; YAML indents with spaces only"
    elif problem.startswith("found duplicate key"):
        problem = f"duplicate key '{problem.removeprefix('found duplicate key ')}'; each key may appear once per section"
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and start is not None and start.line != mark.line:
        problem += f" ({context} from line {start.line + 1})"
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. mlr.enabled=false)")
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} needs a dotted key before '=' (e.g. mlr.enabled=false)")
        try:
            OmegaConf.from_dotlist([item])
        except (yaml.YAMLError, OmegaConfBaseException) as err:
            what = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({what}); quote it, "
                              f"e.g. {key}='\"{value}\"'") from None
    return OmegaConf.from_dotlist(list(overrides))


def _check_sections(node: DictConfig, source: DictConfig, origin: str, prefix: str = "") -> None:
    """A section of the schema (env, trainer, ...) given a plain value, which OmegaConf reports without a key."""
    for key, value in source.items_ex(resolve=False):
        if key in node and isinstance(node[key], DictConfig):
            if not isinstance(value, DictConfig):
                raise ConfigError(f"{prefix}{key} (from {origin}) is a section of keys, not the value {value!r}; "
                                  f"set its keys, e.g. {prefix}{key}.{next(iter(node[key]))}=...")
            _check_sections(node[key], value, origin, f"{prefix}{key}.")


def _domain_name(sources: list[tuple[str, Any]], domains: Mapping[str, DomainSchema], default: str) -> str:
    """The domain named by the last ``domain`` key of the sources (``default`` if none)."""
    name = default
    for origin, source in sources:
        if isinstance(source, DictConfig) and "domain" in source:
            name = source.domain
            if name not in domains:
                raise ConfigError(f"domain={name!r} (from {origin}) is not one of {tuple(domains)}")
    return name


def validate(cfg: DictConfig, domain: DomainSchema) -> None:
    """Bounds of single keys (shared, then the domain's), then the domain's cross-field checks."""
    missing = sorted(_missing_keys(cfg))
    if missing:
        raise ConfigError(f"missing value for {', '.join(missing)}: set it in the config file or as key=value")
    validate_bounds(cfg, COMMON_BOUNDS)
    validate_bounds(cfg, domain.bounds)
    domain.validate(cfg)


# Bounds of single keys (a null value of an optional key is allowed). They are checked before the
# cross-field checks, which divide by these values. Domains name theirs with the same predicates.
AT_LEAST_1 = (lambda v: v >= 1, ">= 1")
AT_LEAST_0 = (lambda v: v >= 0, ">= 0")
POSITIVE = (lambda v: v > 0, "> 0")
UNIT = (lambda v: 0 <= v <= 1, "in [0, 1]")
UNIT_ABOVE_0 = (lambda v: 0 < v <= 1, "in (0, 1]")
ADAM_BETA = (lambda v: 0 <= v < 1, "in [0, 1)")
# An optimiser's step size: finite, positive, at most 1 (inf, NaN or 1e308 would fail the run at its first update).
RATE = (lambda v: 0 < v <= 1, "> 0 and at most 1 (a finite learning rate)")
COMMON_BOUNDS: dict[str, tuple] = {
    "seed": (lambda v: 0 <= v <= MAX_SEED, f"in [0, {MAX_SEED}]"),
    **dict.fromkeys(["env.image_size", "env.frame_stack"], AT_LEAST_1),
    **dict.fromkeys(["mlr.seq_len", "mlr.patch_size", "mlr.block_size", "mlr.num_heads", "mlr.max_seq_positions"],
                    AT_LEAST_1),
    "mlr.mask_ratio": (lambda v: 0 < v < 1, "in the open interval (0, 1)"),
    "mlr.num_attn_layers": AT_LEAST_0,
    **dict.fromkeys(["mlr.mlp_ratio", "mlr.normalize_eps"], POSITIVE),
    "mlr.momentum_tau": UNIT_ABOVE_0,
    "replay.capacity": AT_LEAST_1,
    **dict.fromkeys(["train.num_env_steps", "train.batch_size", "train.updates_per_step"], AT_LEAST_1),
    **dict.fromkeys(["train.init_steps", "train.max_env_restarts"], AT_LEAST_0),
    "eval.every_env_steps": (lambda v: v >= 0, ">= 0 (0: only at the end)"),
    **dict.fromkeys(["eval.num_episodes", "eval.num_envs"], AT_LEAST_1),
    "eval.seed_offset": AT_LEAST_0,
    **dict.fromkeys(["trainer.devices", "trainer.num_nodes", "trainer.checkpoint_every_updates",
                     "trainer.keep_checkpoints", "trainer.log_every_updates", "trainer.finite_check_every"], AT_LEAST_1),
    "trainer.rank_seed_stride": AT_LEAST_0,
    "trainer.max_abs_weight": POSITIVE,
    "tracking.max_checkpoint_artifact_mb": AT_LEAST_0,
}


def validate_bounds(cfg: DictConfig, bounds: Mapping[str, tuple]) -> None:
    for key, (ok, what) in bounds.items():
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, ListConfig):
            require(all(ok(v) for v in value), key, f"entries must each be {what}, got {list(value)}")
        elif value is not None:
            require(ok(value), key, f"must be {what}, got {value}")


def conv_size(size: int, kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Side of the map left by unpadded convolutions (<= 0: nothing is left)."""
    for kernel, stride in zip(kernels, strides):
        if size < kernel:
            return 0
        size = (size - kernel) // stride + 1
    return size


def validate_common(cfg: DictConfig, agent_steps: int) -> None:
    """Checks every domain shares: MLR, training length, replay, trainer, run."""
    validate_mlr(cfg.mlr, cfg.env.image_size, cfg.trainer.compile)
    train = cfg.train
    require(agent_steps > train.init_steps, "train.num_env_steps",
             f"must leave updates after the {train.init_steps} random agent steps (train.init_steps)")
    require(cfg.replay.capacity >= train.batch_size, "replay.capacity", "must be >= train.batch_size")
    validate_replay_device(cfg.replay.device)
    validate_trainer(cfg)
    validate_run(cfg)


# The ablation switches of ``mlr`` and their values (the paper's first).
MLR_SWITCHES = {"mask_strategy": ("cube", "spatial", "temporal", "tube"), "mask_space": ("pixel", "feature"),
                "target": ("latent", "pixel"), "target_encoder": ("momentum", "online"), "loss": ("cosine", "mse")}


def validate_mlr(mlr: DictConfig, image_size: int, compile_mode: bool | str = False) -> None:
    for key, values in MLR_SWITCHES.items():
        require(mlr[key] in values, f"mlr.{key}", f"must be one of {', '.join(values)}; got {mlr[key]!r}")
    require(mlr.mask_strategy != "temporal" or int(mlr.mask_ratio * mlr.seq_len) >= 1, "mlr.mask_ratio",
             f"({mlr.mask_ratio}) x mlr.seq_len ({mlr.seq_len}) masks no frame under mlr.mask_strategy=temporal "
             "(int(ratio * K) frames are masked); raise either")
    require(mlr.target == "latent" or mlr.loss == "cosine", "mlr.loss",
             f"({mlr.loss}) applies to the latent target; mlr.target=pixel always uses MSE on pixels: leave mlr.loss=cosine")
    require(mlr.target == "latent" or mlr.target_encoder == "momentum", "mlr.target_encoder",
             f"({mlr.target_encoder}) chooses the latent target's encoder; mlr.target=pixel has none: leave it momentum")
    require(mlr.mask_space == "pixel" or compile_mode is False, "mlr.mask_space",
             "(feature) masks the conv map through a forward hook, which trainer.compile does not trace; "
             "set trainer.compile=false")
    require(mlr.seq_len % mlr.block_size == 0, "mlr.seq_len",
             f"({mlr.seq_len}) must be divisible by mlr.block_size ({mlr.block_size}): the cube mask is built per "
             "temporal block. Choose e.g. seq_len=16 with block_size 4 or 8")
    require(image_size % mlr.patch_size == 0, "mlr.patch_size", f"({mlr.patch_size}) must divide env.image_size ({image_size})")
    require(mlr.seq_len <= mlr.max_seq_positions, "mlr.seq_len", f"must be <= mlr.max_seq_positions ({mlr.max_seq_positions})")


def validate_trainer(cfg: DictConfig) -> None:
    trainer = cfg.trainer
    require(trainer.precision in PRECISIONS, "trainer.precision", f"must be one of {PRECISIONS}")
    require(trainer.strategy in STRATEGIES, "trainer.strategy", f"must be one of {STRATEGIES}")
    require(trainer.accelerator in ACCELERATORS, "trainer.accelerator",
             f"must be one of {ACCELERATORS}, got {trainer.accelerator!r}")
    ranks = trainer.devices * trainer.num_nodes
    require(ranks == 1 or trainer.strategy == "ddp", "trainer.strategy",
             f"must be 'ddp' to train on {ranks} devices (trainer.devices x trainer.num_nodes)")
    require(trainer.compile in COMPILE_MODES, "trainer.compile",
             f"must be false, default or max-autotune, got {trainer.compile!r}")
    if trainer.cudagraphs:
        import torch

        require(trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available(), "trainer.cudagraphs",
                 "needs a CUDA GPU (none is available here, or trainer.accelerator is not a GPU); set it to false")
        require(trainer.compile not in (False,), "trainer.cudagraphs",
                 "needs trainer.compile=default or max-autotune (CUDA graphs come with torch.compile)")


def validate_run(cfg: DictConfig) -> None:
    """Where the run goes and how it is seeded."""
    name = cfg.run_name
    require(name is None or (name not in ("", ".", "..") and not any(c in name for c in "/\\\0") and len(name) <= 200),
             "run_name", f"({name!r}) must be a plain directory name (no '/', '\\' or '..'), as the run goes to "
             "<output_dir>/<run_name>")
    require(bool(cfg.output_dir.strip()), "output_dir", "must name a directory, e.g. output_dir=runs")
    require(bool(cfg.tracking.experiment.strip()), "tracking.experiment", "must be a non-empty name")
    last_rank = cfg.trainer.devices * cfg.trainer.num_nodes - 1
    highest = cfg.seed + max(cfg.eval.seed_offset, last_rank * cfg.trainer.rank_seed_stride + cfg.train.max_env_restarts)
    require(highest <= MAX_SEED, "seed", f"({cfg.seed}) plus eval.seed_offset or the rank and restart offsets reaches "
             f"{highest}; seeds must stay <= {MAX_SEED}")


def validate_replay_device(device: str) -> None:
    """``replay.device``: cpu, auto or a CUDA device that exists (its memory is checked when the replay is placed)."""
    import torch

    if device in ("cpu", "auto"):
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"replay.device must be cpu, auto or a device such as cuda:0, got {device!r}") from None
    require(parsed.type == "cpu" or (parsed.type == "cuda" and torch.cuda.is_available()
                                      and (parsed.index or 0) < torch.cuda.device_count()),
             "replay.device", f"({device}) is not a device of this machine; use cpu or auto")


def require(ok: bool, key: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {what}")


def _missing_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in cfg:
        if OmegaConf.is_missing(cfg, key):
            keys.append(f"{prefix}{key}")
        elif isinstance(cfg[key], DictConfig):
            keys.extend(_missing_keys(cfg[key], f"{prefix}{key}."))
    return keys


def _unknown_key_message(err: Exception, origin: str, schema: type) -> str:
    full_key = getattr(err, "full_key", None) or "?"
    parent, _, _ = full_key.rpartition(".")
    node = OmegaConf.structured(schema)
    for part in filter(None, parent.split(".")):
        node = node[part]
    allowed = ", ".join(sorted(str(k) for k in node))
    where = f"under '{parent}'" if parent else "at the top level"
    return f"unknown config key '{full_key}' (from {origin}); keys allowed {where}: {allowed}"


def _type_message(err: ValidationError, origin: str) -> str:
    full_key = getattr(err, "full_key", None) or "?"
    expected = getattr(err, "ref_type", None)
    first_line = str(err).splitlines()[0]
    return f"wrong type for '{full_key}' (from {origin}): {first_line}" + (
        f"; expected {expected}" if expected is not None else ""
    )


def config_differences(saved: DictConfig, current: DictConfig, schema: type, allowed: Sequence[str] = ()) -> list[str]:
    """Dotted keys whose values differ between two configs of the dataclass ``schema``, except
    :data:`RESUMABLE_CHANGES` and ``allowed``."""
    flat = [flatten(OmegaConf.to_container(c, resolve=True)) for c in (saved, current)]
    # A key added to the schema after the run was saved (the mlr ablation switches, say) had its
    # default then: every new key defaults to the behaviour before it existed.
    defaults = flatten(OmegaConf.to_container(OmegaConf.structured(schema)))
    flat[0] = {**{k: v for k, v in defaults.items() if k in flat[1]}, **flat[0]}
    keys = sorted(set(flat[0]) | set(flat[1]))
    return [f"{k}: {flat[0].get(k)!r} -> {flat[1].get(k)!r}" for k in keys
            if flat[0].get(k) != flat[1].get(k) and k not in RESUMABLE_CHANGES and k not in allowed]


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested dict -> ``{"a.b.c": value}``."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def replace_text(path: Path, text: str) -> None:
    """Replace ``path``'s content with ``text`` atomically: a crash leaves the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_config(cfg: DictConfig, path: Path) -> None:
    """Replace ``path`` with ``cfg`` as YAML, atomically (:func:`replace_text`)."""
    replace_text(path, to_yaml(cfg))
