"""Typed experiment configuration.

The dataclasses below are the schema *and* the defaults: every default is the value of the official
MLR code (microsoft/Mask-based-Latent-Reconstruction, DMControl part) unless a comment names a
deliberate deviation. Task files under ``conf/dmc/`` only override what differs per task.

Loading is strict: an unknown key, a value of the wrong type or an inconsistent combination raises
:class:`ConfigError` naming the key and what is allowed, before anything is built.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException,
                              ValidationError)


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the config."""


@dataclass
class EnvConfig:
    # "<domain>_<task>" of the dm_control suite, e.g. cartpole_swingup, ball_in_cup_catch.
    task: str = MISSING
    # Physics steps per agent step; per task in the paper (cartpole 8, finger/walker 2, others 4).
    action_repeat: int = MISSING
    image_size: int = 100  # rendered frame, before the crop
    crop_size: int = 84  # random crop for training, centre crop for acting and evaluation
    camera_id: int = 0
    frame_stack: int = 3
    # Faster renderer (no shadow map, no MSAA, persistent camera; 7-10x faster on CPU). The paper
    # used dm_control's default renderer, so this is off by default.
    fast_render: bool = False


@dataclass
class EncoderConfig:
    num_layers: int = 4
    num_filters: int = 64
    feature_dim: int = 50


@dataclass
class SACConfig:
    hidden_dim: int = 1024
    discount: float = 0.99
    init_temperature: float = 0.1
    alpha_lr: float = 1e-4
    alpha_beta: float = 0.5
    actor_lr: float = 1e-3
    actor_beta: float = 0.9
    actor_log_std_min: float = -10.0
    actor_log_std_max: float = 2.0
    actor_update_freq: int = 2
    critic_lr: float = 1e-3
    critic_beta: float = 0.9
    critic_tau: float = 0.01  # moving-average rate of the target Q heads
    encoder_tau: float = 0.05  # moving-average rate of the target critic's encoder
    critic_target_update_freq: int = 2
    # Deviation switch. false (ours): the RL batch's random crop draws offsets 0..16 (every 84-px window
    # of the 100-px frame, as the MLR crop does). true (official SAC sampler): 0..15.
    official_crop_range: bool = False


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
class MLRConfig(MLRBaseConfig):
    patch_size: int = 10  # 10x10 grid on the 100x100 frame
    momentum_tau: float = 0.05  # walker_walk: 0.1
    batch_size: int = 128  # sequences per MLR update
    latent_dim: int = 100  # hidden width of the projection and prediction MLPs
    lr: float = 5e-4  # 0.5 x auxiliary_task_lr of the official configs (cheetah_run: 1e-4)
    warmup_steps: int = 6000
    warmup_init_factor: float = 5e-4  # LR factor at update 0, rising linearly to 1 at warmup_steps
    grad_clip: float = 10.0
    intensity_scale: float = 0.05  # image *= 1 + scale * clip(N(0,1), -2, 2)
    init_std: float = 0.02  # truncated-normal std of every Linear layer of the MLR module
    # Deviation switch. false (ours): B windows of K consecutive steps of one episode, which may end at
    # its last step. true (official sampler): 2B candidate starts, the first B without an
    # episode-final transition kept (a batch may be smaller), no wrap-around of a full buffer.
    official_windows: bool = False
    # Deviation switch. false (ours): target encoder/projection start as copies of the online ones.
    # true (official): MLR's init re-initialises the critic encoder's fc and the MLR target
    # encoder's fc, and initialises the target projection independently.
    official_init: bool = False


@dataclass
class ReplayConfig:
    capacity: int = 100_000
    # Where the frames live: "cpu", "auto" (the training device, or the host when the device lacks the
    # free memory) or a device such as "cuda:0" (checked against its free memory up front). Results do
    # not depend on it: the rows drawn are the same (the index arithmetic always runs on the host).
    device: str = "auto"
    # Prepare the next batch in a background thread while the update runs. Off (paper order): the
    # batch of the update after agent step t is drawn once step t is stored. On: it is drawn one agent
    # step earlier, from a dedicated checkpointed generator (runs stay reproducible and resumable).
    prefetch: bool = False


@dataclass
class TrainConfig:
    num_env_steps: int = 100_000  # the x-axis: DMC environment steps (agent steps x action_repeat)
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


@dataclass
class ExperimentConfig(RunConfig):
    domain: str = "dmc"  # "atari" selects AtariExperimentConfig
    env: EnvConfig = field(default_factory=EnvConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    sac: SACConfig = field(default_factory=SACConfig)
    mlr: MLRConfig = field(default_factory=MLRConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ------------------------------------------------------------------------------------------- Atari
# Atari-100k (data-efficient Rainbow + MLR): a separate schema, chosen by ``domain: atari`` in the
# file or on the command line. Defaults are the official MLR Atari code (SPR's data-efficient Rainbow
# on rlpyt, MLR's scripts/run.py) unless a comment names a deliberate deviation.


@dataclass
class AtariEnvConfig:
    task: str = MISSING  # ale-py game id, snake_case: pong, ms_pacman, up_n_down, ...
    frame_skip: int = 4  # max-pooled over the last two raw frames
    image_size: int = 84  # grayscale, bilinear resize, no crop
    frame_stack: int = 4
    noop_max: int = 30  # up to this many random no-ops at a game's start
    repeat_action_probability: float = 0.0  # no sticky actions
    max_episode_frames: int = 108_000  # raw frames (27k agent steps); the cap is a truncation
    terminal_on_life_loss: bool = True  # training only; evaluation episodes end at game over
    clip_rewards: bool = True  # sign(r), training only
    # Resize of the max-pooled screen: "linear" (official, cv2.INTER_LINEAR) or "area" (gymnasium's default).
    resize: str = "linear"


@dataclass
class RainbowConfig:
    num_atoms: int = 51
    v_min: float = -10.0
    v_max: float = 10.0
    hidden_dim: int = 256  # of each dueling stream
    dueling: bool = True
    double_q: bool = True
    noisy_std: float = 0.1  # sigma_0 of the factorised noisy layers (SPR's default is 0.5)
    head_grad_scale: float = 0.7071067811865476  # 2^-1/2: gradient scale from the head into the encoder
    conv_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    conv_kernels: list[int] = field(default_factory=lambda: [8, 4, 3])
    conv_strides: list[int] = field(default_factory=lambda: [4, 2, 1])
    renormalize: bool = True  # SPR min-max normalisation of the conv output
    # Floor of (max - min) in that normalisation. The official code has none (a constant map divides
    # by zero); 1e-8 changes nothing otherwise.
    renormalize_eps: float = 1e-8
    n_step: int = 10
    discount: float = 0.99
    lr: float = 1e-4
    adam_eps: float = 1.5e-4
    grad_clip: float = 10.0  # norm clip, separately for the stem (conv + Q head) and the MLR decoder
    target_update_interval: int = 1  # updates between target-network updates
    target_update_tau: float = 1.0  # 1: the target is a copy of the online network
    shift_pad: int = 4  # random shift of up to +-4 px (replicate padding)
    intensity_scale: float = 0.05
    target_augmentation: bool = True  # augment the target network's input too
    eval_epsilon: float = 0.001  # evaluation: epsilon-greedy over the mean (noise-free) weights
    # Deviation switch. false (ours): a termination inside the n steps stops the bootstrap. true (the
    # rlpyt commit the official code pins): only a termination at the first step does; a sample whose
    # episode terminates later bootstraps from the last state before the terminal with gamma^n.
    official_nstep_bootstrap: bool = False


@dataclass
class AtariMLRConfig(MLRBaseConfig):
    patch_size: int = 12  # 7x7 grid on 84x84
    momentum_tau: float = 1.0  # 1 = target encoder/projection copied from the online ones at every update
    # Deviation switch. false (ours): exactly int(ratio * patches) = 24/49 patches masked, as DMC.
    # true (official Atari): the patches drawn are *kept*, so 25/49 are masked.
    official_mask_keep: bool = False
    # Deviation switch. false (ours): the masked branch is scaled to [0, 1] like every other input.
    # true (official): the masked frames reach the encoder in [0, 255] (an input-scaling bug that
    # the min-max renormalisation hides).
    official_input_scaling: bool = False
    # Transformer width. null: the flattened conv map (64*7*7 = 3136, the paper; ~157M parameters);
    # a smaller value adds linear maps conv map -> width -> conv map around the transformer.
    decoder_dim: int | None = None
    weight: float = 1.0  # loss = RL loss + weight * MLR loss, one optimiser


@dataclass
class PrioritizedReplayConfig:
    capacity: int = 1_000_000  # more than 100k steps: nothing is evicted
    alpha: float = 0.5
    beta_start: float = 0.4  # annealed linearly to beta_end over training (from the agent-step counter)
    beta_end: float = 1.0
    priority_eps: float = 1e-6  # TorchRL's PrioritizedSampler eps: priorities are (p + eps)^alpha
    # Where the frames live: "cpu", "auto" (the training device, or the host when it lacks the free
    # memory) or a device such as "cuda:0"; as for DMC, results do not depend on it.
    device: str = "auto"
    kl_clamp: float = 1e-6  # priorities are the per-sample KL clamped to [kl_clamp, 1 / kl_clamp] (rlpyt EPS)
    # Priority of new rows: "max" (ours, PER and TorchRL: the running maximum) or a number (the
    # official rlpyt value is 1).
    new_priority: str = "max"


@dataclass
class AtariTrainConfig(TrainConfig):
    num_env_steps: int = 100_000  # agent steps (the "100k" of Atari-100k; 400k frames)
    init_steps: int = 2000  # uniformly random actions (epsilon = 1) before the first update
    batch_size: int = 32
    updates_per_step: int = 2  # replay ratio 64 at batch 32


@dataclass
class AtariEvalConfig(EvalConfig):
    every_env_steps: int = 0  # 0: only at the end (--final-eval-only 1); otherwise also every this many agent steps
    num_episodes: int = 100
    # Evaluation episodes stop after this many agent steps (null: the environment's 108k-frame cap).
    max_steps: int | None = None


@dataclass
class AtariExperimentConfig(RunConfig):
    domain: str = "atari"
    env: AtariEnvConfig = field(default_factory=AtariEnvConfig)
    rainbow: RainbowConfig = field(default_factory=RainbowConfig)
    mlr: AtariMLRConfig = field(default_factory=AtariMLRConfig)
    replay: PrioritizedReplayConfig = field(default_factory=PrioritizedReplayConfig)
    train: AtariTrainConfig = field(default_factory=AtariTrainConfig)
    eval: AtariEvalConfig = field(default_factory=AtariEvalConfig)


PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
STRATEGIES = ("auto", "ddp")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
# Keys a resumed run may change: they affect bookkeeping, not the experiment.
RESUMABLE_CHANGES = ("run_name", "output_dir", "trainer.checkpoint_every_updates", "trainer.keep_checkpoints",
                     "trainer.log_every_updates", "trainer.compile", "trainer.cudagraphs", "trainer.finite_check_every",
                     "replay.device")
# Optimiser settings a resume may change when the user names them (``fit --resume ... --allow-change
# KEY``), e.g. to continue a diverging run with a smaller learning rate.
OPTIMIZER_KEYS = ("sac.critic_lr", "sac.actor_lr", "sac.alpha_lr", "sac.critic_beta", "sac.actor_beta",
                  "sac.alpha_beta", "mlr.lr", "mlr.grad_clip", "rainbow.lr", "rainbow.adam_eps", "rainbow.grad_clip")
MAX_SEED = 2**32 - 1  # numpy's (and so Lightning's) seed range
COMPILE_MODES = (False, True, "default", "max-autotune")


def load_config(paths: str | Path | Sequence[str | Path] | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Schema defaults <- YAML files (merged in order) <- ``key=value`` overrides, then :func:`validate`."""
    if paths is None:
        paths = []
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    sources: list[tuple[str, Any]] = [(str(path), read_yaml(Path(path))) for path in paths]
    if overrides:
        sources.append(("command line", _parse_overrides(overrides)))
    schema = _schema(sources)
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
        validate(cfg)
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


def _schema(sources: list[tuple[str, Any]]) -> type:
    """The schema of the domain named by the last ``domain`` key of the sources (default dmc)."""
    from mlr_lightning.domains import DOMAINS

    domain = "dmc"
    for origin, source in sources:
        if isinstance(source, DictConfig) and "domain" in source:
            domain = source.domain
            if domain not in DOMAINS:
                raise ConfigError(f"domain={domain!r} (from {origin}) is not one of {tuple(DOMAINS)}")
    return DOMAINS[domain].schema


def validate(cfg: DictConfig) -> None:
    """Bounds of single keys, then cross-field checks (the domain's own checks)."""
    from mlr_lightning.domains import domain_of

    missing = sorted(_missing_keys(cfg))
    if missing:
        raise ConfigError(f"missing value for {', '.join(missing)}: set it in the config file or as key=value")
    validate_bounds(cfg)
    domain_of(cfg).validate(cfg)


# Bounds of single keys, of both domains' schemas (a key a domain lacks is skipped; a null value of an
# optional key is allowed). They are checked before the cross-field checks, which divide by these values.
AT_LEAST_1 = (lambda v: v >= 1, ">= 1")
AT_LEAST_0 = (lambda v: v >= 0, ">= 0")
POSITIVE = (lambda v: v > 0, "> 0")
UNIT = (lambda v: 0 <= v <= 1, "in [0, 1]")
UNIT_ABOVE_0 = (lambda v: 0 < v <= 1, "in (0, 1]")
ADAM_BETA = (lambda v: 0 <= v < 1, "in [0, 1)")
# An optimiser's step size: finite, positive, at most 1 (inf, NaN or 1e308 would fail the run at its first update).
RATE = (lambda v: 0 < v <= 1, "> 0 and at most 1 (a finite learning rate)")
BOUNDS: dict[str, tuple] = {
    "seed": (lambda v: 0 <= v <= MAX_SEED, f"in [0, {MAX_SEED}]"),
    **dict.fromkeys(["env.action_repeat", "env.frame_skip", "env.frame_stack", "env.image_size", "env.crop_size",
                     "env.max_episode_frames"], AT_LEAST_1),
    "env.camera_id": (lambda v: v >= -1, ">= 0 (or -1, the free camera)"),
    "env.noop_max": AT_LEAST_0,
    "env.repeat_action_probability": UNIT,
    **dict.fromkeys(["encoder.num_layers", "encoder.num_filters", "encoder.feature_dim", "sac.hidden_dim",
                     "sac.actor_update_freq", "sac.critic_target_update_freq"], AT_LEAST_1),
    **dict.fromkeys(["sac.alpha_lr", "sac.actor_lr", "sac.critic_lr", "rainbow.lr", "mlr.lr"], RATE),
    "sac.init_temperature": POSITIVE,
    **dict.fromkeys(["sac.alpha_beta", "sac.actor_beta", "sac.critic_beta"], ADAM_BETA),
    **dict.fromkeys(["sac.critic_tau", "sac.encoder_tau"], UNIT_ABOVE_0),
    "sac.discount": UNIT,
    "rainbow.num_atoms": (lambda v: v >= 2, ">= 2"),
    **dict.fromkeys(["rainbow.hidden_dim", "rainbow.conv_channels", "rainbow.conv_kernels", "rainbow.conv_strides",
                     "rainbow.n_step", "rainbow.target_update_interval"], AT_LEAST_1),
    **dict.fromkeys(["rainbow.noisy_std", "rainbow.head_grad_scale", "rainbow.renormalize_eps", "rainbow.adam_eps",
                     "rainbow.shift_pad", "rainbow.intensity_scale"], AT_LEAST_0),
    "rainbow.grad_clip": POSITIVE,
    **dict.fromkeys(["rainbow.discount", "rainbow.eval_epsilon"], UNIT),
    "rainbow.target_update_tau": UNIT_ABOVE_0,
    **dict.fromkeys(["mlr.seq_len", "mlr.patch_size", "mlr.block_size", "mlr.num_heads", "mlr.max_seq_positions",
                     "mlr.batch_size", "mlr.latent_dim", "mlr.warmup_steps", "mlr.decoder_dim"], AT_LEAST_1),
    "mlr.mask_ratio": (lambda v: 0 < v < 1, "in the open interval (0, 1)"),
    **dict.fromkeys(["mlr.num_attn_layers", "mlr.intensity_scale", "mlr.weight"], AT_LEAST_0),
    **dict.fromkeys(["mlr.mlp_ratio", "mlr.normalize_eps", "mlr.grad_clip", "mlr.init_std"], POSITIVE),
    "mlr.momentum_tau": UNIT_ABOVE_0,
    "mlr.warmup_init_factor": UNIT,
    "replay.capacity": AT_LEAST_1,
    **dict.fromkeys(["replay.alpha", "replay.priority_eps"], AT_LEAST_0),
    **dict.fromkeys(["replay.beta_start", "replay.beta_end"], UNIT),
    "replay.kl_clamp": UNIT_ABOVE_0,
    **dict.fromkeys(["train.num_env_steps", "train.batch_size", "train.updates_per_step"], AT_LEAST_1),
    **dict.fromkeys(["train.init_steps", "train.max_env_restarts"], AT_LEAST_0),
    "eval.every_env_steps": (lambda v: v >= 0, ">= 0 (0: only at the end)"),
    **dict.fromkeys(["eval.num_episodes", "eval.max_steps", "eval.num_envs"], AT_LEAST_1),
    "eval.seed_offset": AT_LEAST_0,
    **dict.fromkeys(["trainer.devices", "trainer.num_nodes", "trainer.checkpoint_every_updates",
                     "trainer.keep_checkpoints", "trainer.log_every_updates", "trainer.finite_check_every"], AT_LEAST_1),
    "trainer.rank_seed_stride": AT_LEAST_0,
    "trainer.max_abs_weight": POSITIVE,
    "tracking.max_checkpoint_artifact_mb": AT_LEAST_0,
}


def validate_bounds(cfg: DictConfig) -> None:
    for key, (ok, what) in BOUNDS.items():
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, ListConfig):
            _require(all(ok(v) for v in value), key, f"entries must each be {what}, got {list(value)}")
        elif value is not None:
            _require(ok(value), key, f"must be {what}, got {value}")


def validate_dmc(cfg: DictConfig) -> None:
    env, train, enc = cfg.env, cfg.train, cfg.encoder
    _require(env.crop_size <= env.image_size, "env.crop_size", f"({env.crop_size}) must be <= env.image_size ({env.image_size})")
    # The encoder: a 3x3 conv of stride 2, then num_layers - 1 of stride 1, on the crop.
    size = _conv_size(env.crop_size, [3] + [3] * (enc.num_layers - 1), [2] + [1] * (enc.num_layers - 1))
    first = _conv_size(env.crop_size, [3], [2])
    _require(first >= 1, "env.crop_size", f"({env.crop_size}) must be >= 3 for the encoder's first 3x3 convolution")
    _require(size >= 1, "encoder.num_layers", f"({enc.num_layers}) leaves no pixels of the {env.crop_size}-px crop "
             f"(each layer trims 2); use at most {(first - 1) // 2 + 1} layers or a larger env.crop_size")
    _require(cfg.sac.actor_log_std_min < cfg.sac.actor_log_std_max, "sac.actor_log_std_min",
             f"({cfg.sac.actor_log_std_min}) must be < sac.actor_log_std_max ({cfg.sac.actor_log_std_max})")
    _require(not cfg.mlr.enabled or enc.feature_dim % cfg.mlr.num_heads == 0, "mlr.num_heads",
             f"({cfg.mlr.num_heads}) must divide encoder.feature_dim ({enc.feature_dim}), the decoder's width")
    _require(train.num_env_steps % env.action_repeat == 0, "train.num_env_steps",
             f"({train.num_env_steps}) must be a multiple of env.action_repeat ({env.action_repeat})")
    _require(cfg.eval.every_env_steps % env.action_repeat == 0, "eval.every_env_steps",
             f"({cfg.eval.every_env_steps}) must be a multiple of env.action_repeat ({env.action_repeat})")
    validate_common(cfg, agent_steps=train.num_env_steps // env.action_repeat)


def new_priority(value: str) -> float | None:
    """``replay.new_priority``: None for "max", else the number (NaN if it is neither)."""
    if value == "max":
        return None
    try:
        return float(value)
    except ValueError:
        return float("nan")


def validate_atari(cfg: DictConfig) -> None:
    env, rb, mlr = cfg.env, cfg.rainbow, cfg.mlr
    _require(env.resize in ("linear", "area"), "env.resize", f"must be 'linear' or 'area', got {env.resize!r}")
    _require(new_priority(cfg.replay.new_priority) is None or new_priority(cfg.replay.new_priority) > 0,
             "replay.new_priority", f"must be 'max' or a positive number (the official value is 1), got "
                                    f"{cfg.replay.new_priority!r}")
    _require(rb.v_min < rb.v_max, "rainbow.v_min", f"({rb.v_min}) must be < rainbow.v_max ({rb.v_max})")
    _require(len(rb.conv_channels) == len(rb.conv_kernels) == len(rb.conv_strides) >= 1, "rainbow.conv_channels",
             "conv_channels, conv_kernels and conv_strides must be non-empty lists of the same length")
    size = _conv_size(env.image_size, rb.conv_kernels, rb.conv_strides)
    _require(size >= 1, "rainbow.conv_kernels", f"/ conv_strides {list(rb.conv_kernels)} / {list(rb.conv_strides)} "
             f"leave no pixels of the {env.image_size}-px frame (env.image_size); use smaller kernels or strides")
    width = mlr.decoder_dim or rb.conv_channels[-1] * size * size  # null: the flattened conv map
    _require(not mlr.enabled or width % mlr.num_heads == 0, "mlr.num_heads",
             f"({mlr.num_heads}) must divide the decoder's width ({width}: mlr.decoder_dim, or the conv map if null)")
    _require(cfg.replay.beta_start <= cfg.replay.beta_end, "replay.beta_start",
             f"({cfg.replay.beta_start}) must be <= replay.beta_end ({cfg.replay.beta_end})")
    validate_common(cfg, agent_steps=cfg.train.num_env_steps)


def _conv_size(size: int, kernels: Sequence[int], strides: Sequence[int]) -> int:
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
    _require(agent_steps > train.init_steps, "train.num_env_steps",
             f"must leave updates after the {train.init_steps} random agent steps (train.init_steps)")
    _require(cfg.replay.capacity >= train.batch_size, "replay.capacity", "must be >= train.batch_size")
    validate_replay_device(cfg.replay.device)
    validate_trainer(cfg)
    validate_run(cfg)


# The ablation switches of ``mlr`` and their values (the paper's first).
MLR_SWITCHES = {"mask_strategy": ("cube", "spatial", "temporal", "tube"), "mask_space": ("pixel", "feature"),
                "target": ("latent", "pixel"), "target_encoder": ("momentum", "online"), "loss": ("cosine", "mse")}


def validate_mlr(mlr: DictConfig, image_size: int, compile_mode: bool | str = False) -> None:
    for key, values in MLR_SWITCHES.items():
        _require(mlr[key] in values, f"mlr.{key}", f"must be one of {', '.join(values)}; got {mlr[key]!r}")
    _require(mlr.mask_strategy != "temporal" or int(mlr.mask_ratio * mlr.seq_len) >= 1, "mlr.mask_ratio",
             f"({mlr.mask_ratio}) x mlr.seq_len ({mlr.seq_len}) masks no frame under mlr.mask_strategy=temporal "
             "(int(ratio * K) frames are masked); raise either")
    _require(mlr.target == "latent" or mlr.loss == "cosine", "mlr.loss",
             f"({mlr.loss}) applies to the latent target; mlr.target=pixel always uses MSE on pixels: leave mlr.loss=cosine")
    _require(mlr.target == "latent" or mlr.target_encoder == "momentum", "mlr.target_encoder",
             f"({mlr.target_encoder}) chooses the latent target's encoder; mlr.target=pixel has none: leave it momentum")
    _require(mlr.mask_space == "pixel" or compile_mode is False, "mlr.mask_space",
             "(feature) masks the conv map through a forward hook, which trainer.compile does not trace; "
             "set trainer.compile=false")
    _require(mlr.seq_len % mlr.block_size == 0, "mlr.seq_len",
             f"({mlr.seq_len}) must be divisible by mlr.block_size ({mlr.block_size}): the cube mask is built per "
             "temporal block. Choose e.g. seq_len=16 with block_size 4 or 8")
    _require(image_size % mlr.patch_size == 0, "mlr.patch_size", f"({mlr.patch_size}) must divide env.image_size ({image_size})")
    _require(mlr.seq_len <= mlr.max_seq_positions, "mlr.seq_len", f"must be <= mlr.max_seq_positions ({mlr.max_seq_positions})")


def validate_trainer(cfg: DictConfig) -> None:
    trainer = cfg.trainer
    _require(trainer.precision in PRECISIONS, "trainer.precision", f"must be one of {PRECISIONS}")
    _require(trainer.strategy in STRATEGIES, "trainer.strategy", f"must be one of {STRATEGIES}")
    _require(trainer.accelerator in ACCELERATORS, "trainer.accelerator",
             f"must be one of {ACCELERATORS}, got {trainer.accelerator!r}")
    ranks = trainer.devices * trainer.num_nodes
    _require(ranks == 1 or trainer.strategy == "ddp", "trainer.strategy",
             f"must be 'ddp' to train on {ranks} devices (trainer.devices x trainer.num_nodes)")
    _require(trainer.compile in COMPILE_MODES, "trainer.compile",
             f"must be false, default or max-autotune, got {trainer.compile!r}")
    if trainer.cudagraphs:
        import torch

        _require(trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available(), "trainer.cudagraphs",
                 "needs a CUDA GPU (none is available here, or trainer.accelerator is not a GPU); set it to false")
        _require(trainer.compile not in (False,), "trainer.cudagraphs",
                 "needs trainer.compile=default or max-autotune (CUDA graphs come with torch.compile)")


def validate_run(cfg: DictConfig) -> None:
    """Where the run goes and how it is seeded."""
    name = cfg.run_name
    _require(name is None or (name not in ("", ".", "..") and not any(c in name for c in "/\\\0") and len(name) <= 200),
             "run_name", f"({name!r}) must be a plain directory name (no '/', '\\' or '..'), as the run goes to "
             "<output_dir>/<run_name>")
    _require(bool(cfg.output_dir.strip()), "output_dir", "must name a directory, e.g. output_dir=runs")
    _require(bool(cfg.tracking.experiment.strip()), "tracking.experiment", "must be a non-empty name")
    last_rank = cfg.trainer.devices * cfg.trainer.num_nodes - 1
    highest = cfg.seed + max(cfg.eval.seed_offset, last_rank * cfg.trainer.rank_seed_stride + cfg.train.max_env_restarts)
    _require(highest <= MAX_SEED, "seed", f"({cfg.seed}) plus eval.seed_offset or the rank and restart offsets reaches "
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
    _require(parsed.type == "cpu" or (parsed.type == "cuda" and torch.cuda.is_available()
                                      and (parsed.index or 0) < torch.cuda.device_count()),
             "replay.device", f"({device}) is not a device of this machine; use cpu or auto")


def _require(ok: bool, key: str, what: str) -> None:
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


def config_differences(saved: DictConfig, current: DictConfig, allowed: Sequence[str] = ()) -> list[str]:
    """Dotted keys whose values differ between two configs, except :data:`RESUMABLE_CHANGES` and ``allowed``."""
    flat = [flatten(OmegaConf.to_container(c, resolve=True)) for c in (saved, current)]
    # A key added to the schema after the run was saved (the mlr ablation switches, say) had its
    # default then: every new key defaults to the behaviour before it existed.
    defaults = flatten(OmegaConf.to_container(OmegaConf.structured(_schema([("saved config", saved)]))))
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


def write_config(cfg: DictConfig, path: Path) -> None:
    """Replace ``path`` with ``cfg`` as YAML atomically: a crash leaves the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(to_yaml(cfg))
    os.replace(tmp, path)
