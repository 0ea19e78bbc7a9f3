"""DeepMind Control from pixels: SAC + MLR (the official ``DMControl/`` code) on a uniform frame replay.

This module is the whole domain: its config schema (every default the official code's value unless a
comment names a deliberate deviation; task files under ``conf/dmc/`` override what differs per task),
its bounds and cross-field checks, its reference scores, and the factories the experiment calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING, DictConfig, OmegaConf

from mlr_lightning.agents.sac_mlr import SACMLRAgent
from mlr_lightning.config import (ADAM_BETA, AT_LEAST_1, POSITIVE, RATE, UNIT, UNIT_ABOVE_0, AT_LEAST_0, EvalConfig,
                                  MLRBaseConfig, RunConfig, TrainConfig, conv_size, require, validate_common)
from mlr_lightning.data.replay import UniformReplay
from mlr_lightning.envs.dmc import UnknownTaskError, make_dmc_env, split_task


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
    # Faster renderer (no shadow map, no MSAA, persistent camera; docs/benchmarks.md). The paper
    # used dm_control's default renderer, so this is off by default.
    fast_render: bool = False


@dataclass
class EncoderConfig:
    num_layers: int = 4
    num_filters: int = 64
    feature_dim: int = 50
    # Pretraining evaluation (not in the paper's RL runs): start from this run directory's (or
    # checkpoint's) trained critic encoder instead of a fresh initialisation (training/pretrained.py).
    init_from: str | None = None
    # Keep the encoder fixed: its weights never change; the actor, the Q heads and the temperature still
    # train. Needs mlr.enabled=false (MLR trains the encoder).
    freeze: bool = False


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
class ExperimentConfig(RunConfig):
    domain: str = "dmc"
    env: EnvConfig = field(default_factory=EnvConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    sac: SACConfig = field(default_factory=SACConfig)
    mlr: MLRConfig = field(default_factory=MLRConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# Bounds of the keys only this schema has (config.COMMON_BOUNDS holds the shared ones).
BOUNDS: dict[str, tuple] = {
    **dict.fromkeys(["env.action_repeat", "env.crop_size"], AT_LEAST_1),
    "env.camera_id": (lambda v: v >= -1, ">= 0 (or -1, the free camera)"),
    **dict.fromkeys(["encoder.num_layers", "encoder.num_filters", "encoder.feature_dim", "sac.hidden_dim",
                     "sac.actor_update_freq", "sac.critic_target_update_freq"], AT_LEAST_1),
    **dict.fromkeys(["sac.alpha_lr", "sac.actor_lr", "sac.critic_lr", "mlr.lr"], RATE),
    "sac.init_temperature": POSITIVE,
    **dict.fromkeys(["sac.alpha_beta", "sac.actor_beta", "sac.critic_beta"], ADAM_BETA),
    **dict.fromkeys(["sac.critic_tau", "sac.encoder_tau"], UNIT_ABOVE_0),
    "sac.discount": UNIT,
    **dict.fromkeys(["mlr.batch_size", "mlr.latent_dim", "mlr.warmup_steps"], AT_LEAST_1),
    "mlr.intensity_scale": AT_LEAST_0,
    **dict.fromkeys(["mlr.grad_clip", "mlr.init_std"], POSITIVE),
    "mlr.warmup_init_factor": UNIT,
}
# Optimiser settings a resume may change when named (``fit --resume RUN --allow-change KEY``).
OPTIMIZER_KEYS = ("sac.critic_lr", "sac.actor_lr", "sac.alpha_lr", "sac.critic_beta", "sac.actor_beta", "sac.alpha_beta",
                  "mlr.lr", "mlr.grad_clip")


def validate_dmc(cfg: DictConfig) -> None:
    env, train, enc = cfg.env, cfg.train, cfg.encoder
    require(env.crop_size <= env.image_size, "env.crop_size", f"({env.crop_size}) must be <= env.image_size ({env.image_size})")
    # The encoder: a 3x3 conv of stride 2, then num_layers - 1 of stride 1, on the crop.
    size = conv_size(env.crop_size, [3] + [3] * (enc.num_layers - 1), [2] + [1] * (enc.num_layers - 1))
    first = conv_size(env.crop_size, [3], [2])
    require(first >= 1, "env.crop_size", f"({env.crop_size}) must be >= 3 for the encoder's first 3x3 convolution")
    require(size >= 1, "encoder.num_layers", f"({enc.num_layers}) leaves no pixels of the {env.crop_size}-px crop "
             f"(each layer trims 2); use at most {(first - 1) // 2 + 1} layers or a larger env.crop_size")
    require(not (enc.freeze and cfg.mlr.enabled), "encoder.freeze",
            "leaves MLR nothing to train (its loss trains the encoder); set mlr.enabled=false")
    require(cfg.sac.actor_log_std_min < cfg.sac.actor_log_std_max, "sac.actor_log_std_min",
             f"({cfg.sac.actor_log_std_min}) must be < sac.actor_log_std_max ({cfg.sac.actor_log_std_max})")
    require(not cfg.mlr.enabled or enc.feature_dim % cfg.mlr.num_heads == 0, "mlr.num_heads",
             f"({cfg.mlr.num_heads}) must divide encoder.feature_dim ({enc.feature_dim}), the decoder's width")
    require(train.num_env_steps % env.action_repeat == 0, "train.num_env_steps",
             f"({train.num_env_steps}) must be a multiple of env.action_repeat ({env.action_repeat})")
    require(cfg.eval.every_env_steps % env.action_repeat == 0, "eval.every_env_steps",
             f"({cfg.eval.every_env_steps}) must be a multiple of env.action_repeat ({env.action_repeat})")
    validate_common(cfg, agent_steps=train.num_env_steps // env.action_repeat)


# The paper's DMControl results: mean ± std over 10 seeds at 100k and 500k environment steps, from the
# result figure of the official repository (microsoft/Mask-based-Latent-Reconstruction, figs/DMC.png).
RESULTS: dict[str, dict[str, dict[int, tuple[float, float]]]] = {
    "finger_spin": {"MLR": {100_000: (907, 58), 500_000: (973, 31)}, "Baseline": {100_000: (853, 112), 500_000: (944, 97)}},
    "cartpole_swingup": {"MLR": {100_000: (806, 48), 500_000: (872, 5)}, "Baseline": {100_000: (784, 63), 500_000: (871, 4)}},
    "reacher_easy": {"MLR": {100_000: (866, 103), 500_000: (957, 41)}, "Baseline": {100_000: (593, 118), 500_000: (943, 52)}},
    "cheetah_run": {"MLR": {100_000: (482, 38), 500_000: (674, 37)}, "Baseline": {100_000: (399, 80), 500_000: (602, 67)}},
    "walker_walk": {"MLR": {100_000: (643, 114), 500_000: (939, 10)}, "Baseline": {100_000: (424, 281), 500_000: (818, 263)}},
    "ball_in_cup_catch": {"MLR": {100_000: (933, 16), 500_000: (964, 14)}, "Baseline": {100_000: (648, 287), 500_000: (960, 10)}},
}
MAX_RETURN = 1000.0  # dm_control rewards are in [0, 1] per step over 1000 steps


class DMCDomain:
    name = "dmc"
    schema = ExperimentConfig
    bounds = BOUNDS
    optimizer_keys = OPTIMIZER_KEYS
    frame_channels = 3  # RGB
    agent_name = "sac"
    agent_class = SACMLRAgent
    has_physics = True  # env.game._env.physics: dm_control's simulator under the pixel wrapper

    def validate(self, cfg: DictConfig) -> None:
        validate_dmc(cfg)

    def check_task(self, cfg: DictConfig) -> None:
        domain, task = split_task(cfg.env.task)
        from dm_control import suite  # imported by split_task, after the GL backend was chosen

        cameras = suite.load(domain, task).physics.model.ncam  # the model only, no renderer
        if not -1 <= cfg.env.camera_id < cameras:
            use = f"0..{cameras - 1}, or -1 for the free camera" if cameras else "-1, the free camera"
            raise UnknownTaskError(f"env.camera_id={cfg.env.camera_id} is not a camera of {cfg.env.task}, which has "
                                   f"{cameras}: use {use}")

    def make_env(self, cfg: DictConfig, seed: int, train: bool = True):
        e = cfg.env  # training and evaluation environments are the same on DMC
        return make_dmc_env(e.task, e.action_repeat, e.image_size, e.camera_id, e.frame_stack, e.fast_render, seed)

    def make_agent(self, cfg: DictConfig, env) -> SACMLRAgent:
        return SACMLRAgent(OmegaConf.to_container(cfg, resolve=True), action_dim=env.action_spec.shape[-1])

    def make_replay(self, cfg: DictConfig) -> UniformReplay:
        return UniformReplay(cfg.replay.capacity, cfg.env.frame_stack, cfg.mlr.seq_len, cfg.train.batch_size,
                             window_batch_size=cfg.mlr.batch_size if cfg.mlr.enabled else None,
                             official_windows=cfg.mlr.official_windows)

    def env_steps_per_agent_step(self, cfg: DictConfig) -> int:
        return cfg.env.action_repeat  # the x-axis counts physics steps

    def eval_metrics(self, cfg: DictConfig):
        return None

    def callbacks(self, cfg: DictConfig, replay) -> list:
        return []

    def normalized_score(self, task: str, score: float) -> float:
        return score / MAX_RETURN

    def paper_reference(self, task: str, algorithm: str, budget: int) -> str:
        mean_std = RESULTS.get(task, {}).get(algorithm, {}).get(budget)
        return "" if mean_std is None else f"{mean_std[0]:g}±{mean_std[1]:g}"


DMC = DMCDomain()
