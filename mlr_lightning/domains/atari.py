"""Atari-100k: data-efficient Rainbow (C51) + MLR (the official ``Atari/`` code, SPR on rlpyt) on a
prioritized n-step replay, with the human-normalised score as an evaluation metric.

This module is the whole domain: its config schema, chosen by ``domain: atari`` in a file or on the
command line (every default the official code's value, SPR's data-efficient Rainbow on rlpyt and MLR's
scripts/run.py, unless a comment names a deliberate deviation), its bounds and cross-field checks,
its reference scores, and the factories the experiment calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import lightning.pytorch as pl
from omegaconf import MISSING, DictConfig, OmegaConf

from mlr_lightning.agents.rainbow_mlr import RainbowMLRAgent
from mlr_lightning.config import (AT_LEAST_0, AT_LEAST_1, POSITIVE, RATE, UNIT, UNIT_ABOVE_0, EvalConfig,
                                  MLRBaseConfig, RunConfig, TrainConfig, conv_size, require, validate_common)
from mlr_lightning.data.prioritized import PrioritizedReplay
from mlr_lightning.envs.atari import check_game, make_atari_env


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


# Bounds of the keys only this schema has (config.COMMON_BOUNDS holds the shared ones).
BOUNDS: dict[str, tuple] = {
    **dict.fromkeys(["env.frame_skip", "env.max_episode_frames"], AT_LEAST_1),
    "env.noop_max": AT_LEAST_0,
    "env.repeat_action_probability": UNIT,
    "rainbow.num_atoms": (lambda v: v >= 2, ">= 2"),
    **dict.fromkeys(["rainbow.hidden_dim", "rainbow.conv_channels", "rainbow.conv_kernels", "rainbow.conv_strides",
                     "rainbow.n_step", "rainbow.target_update_interval"], AT_LEAST_1),
    **dict.fromkeys(["rainbow.noisy_std", "rainbow.head_grad_scale", "rainbow.renormalize_eps", "rainbow.adam_eps",
                     "rainbow.shift_pad", "rainbow.intensity_scale"], AT_LEAST_0),
    "rainbow.lr": RATE,
    "rainbow.grad_clip": POSITIVE,
    **dict.fromkeys(["rainbow.discount", "rainbow.eval_epsilon"], UNIT),
    "rainbow.target_update_tau": UNIT_ABOVE_0,
    "mlr.decoder_dim": AT_LEAST_1,
    "mlr.weight": AT_LEAST_0,
    **dict.fromkeys(["replay.alpha", "replay.priority_eps"], AT_LEAST_0),
    **dict.fromkeys(["replay.beta_start", "replay.beta_end"], UNIT),
    "replay.kl_clamp": UNIT_ABOVE_0,
    "eval.max_steps": AT_LEAST_1,
}
# Optimiser settings a resume may change when named (``fit --resume RUN --allow-change KEY``).
OPTIMIZER_KEYS = ("rainbow.lr", "rainbow.adam_eps", "rainbow.grad_clip")


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
    require(env.resize in ("linear", "area"), "env.resize", f"must be 'linear' or 'area', got {env.resize!r}")
    require(new_priority(cfg.replay.new_priority) is None or new_priority(cfg.replay.new_priority) > 0,
             "replay.new_priority", f"must be 'max' or a positive number (the official value is 1), got "
                                    f"{cfg.replay.new_priority!r}")
    require(rb.v_min < rb.v_max, "rainbow.v_min", f"({rb.v_min}) must be < rainbow.v_max ({rb.v_max})")
    require(len(rb.conv_channels) == len(rb.conv_kernels) == len(rb.conv_strides) >= 1, "rainbow.conv_channels",
             "conv_channels, conv_kernels and conv_strides must be non-empty lists of the same length")
    size = conv_size(env.image_size, rb.conv_kernels, rb.conv_strides)
    require(size >= 1, "rainbow.conv_kernels", f"/ conv_strides {list(rb.conv_kernels)} / {list(rb.conv_strides)} "
             f"leave no pixels of the {env.image_size}-px frame (env.image_size); use smaller kernels or strides")
    width = mlr.decoder_dim or rb.conv_channels[-1] * size * size  # null: the flattened conv map
    require(not mlr.enabled or width % mlr.num_heads == 0, "mlr.num_heads",
             f"({mlr.num_heads}) must divide the decoder's width ({width}: mlr.decoder_dim, or the conv map if null)")
    require(cfg.replay.beta_start <= cfg.replay.beta_end, "replay.beta_start",
             f"({cfg.replay.beta_start}) must be <= replay.beta_end ({cfg.replay.beta_end})")
    validate_common(cfg, agent_steps=cfg.train.num_env_steps)


# Atari-100k: game -> (random, human) reference scores [code: Atari/src/rlpyt_utils.py].
REFERENCE: dict[str, tuple[float, float]] = {
    "alien": (227.8, 7127.7), "amidar": (5.8, 1719.5), "assault": (222.4, 742.0), "asterix": (210.0, 8503.3),
    "bank_heist": (14.2, 753.1), "battle_zone": (2360.0, 37187.5), "boxing": (0.1, 12.1), "breakout": (1.7, 30.5),
    "chopper_command": (811.0, 7387.8), "crazy_climber": (10780.5, 35829.4), "demon_attack": (152.1, 1971.0),
    "freeway": (0.0, 29.6), "frostbite": (65.2, 4334.7), "gopher": (257.6, 2412.5), "hero": (1027.0, 30826.4),
    "jamesbond": (29.0, 302.8), "kangaroo": (52.0, 3035.0), "krull": (1598.0, 2665.5),
    "kung_fu_master": (258.5, 22736.3), "ms_pacman": (307.3, 6951.6), "pong": (-20.7, 14.6),
    "private_eye": (24.9, 69571.3), "qbert": (163.9, 13455.0), "road_runner": (11.5, 7845.0),
    "seaquest": (68.4, 42054.7), "up_n_down": (533.4, 11693.2),
}

# The paper's Atari-100k raw scores of MLR and its Baseline [README fig: figs/Atari_Full.png].
RESULTS: dict[str, dict[str, float]] = {
    "MLR": {
        "alien": 990.1, "amidar": 227.7, "assault": 643.7, "asterix": 883.7, "bank_heist": 180.3, "battle_zone": 16080.0,
        "boxing": 26.4, "breakout": 16.8, "chopper_command": 910.7, "crazy_climber": 24633.3, "demon_attack": 854.6,
        "freeway": 30.2, "frostbite": 2381.1, "gopher": 822.3, "hero": 7919.3, "jamesbond": 423.2, "kangaroo": 8516.0,
        "krull": 3923.1, "kung_fu_master": 10652.0, "ms_pacman": 1481.3, "pong": 4.9, "private_eye": 100.0,
        "qbert": 3410.4, "road_runner": 12049.7, "seaquest": 628.3, "up_n_down": 6675.7,
    },
    "Baseline": {
        "alien": 678.5, "amidar": 132.8, "assault": 493.3, "asterix": 1021.3, "bank_heist": 288.2, "battle_zone": 13076.7,
        "boxing": 14.3, "breakout": 16.7, "chopper_command": 878.7, "crazy_climber": 28235.7, "demon_attack": 310.5,
        "freeway": 30.9, "frostbite": 994.3, "gopher": 650.9, "hero": 4661.2, "jamesbond": 270.0, "kangaroo": 5036.0,
        "krull": 3571.3, "kung_fu_master": 10517.3, "ms_pacman": 1320.9, "pong": -3.1, "private_eye": 93.3,
        "qbert": 553.8, "road_runner": 12337.0, "seaquest": 471.9, "up_n_down": 4112.8,
    },
}


# Atari-100k std over the paper's 3 seeds (its per-game table with std, Table 6), for the games our source
# gives. The MLR column is labelled there; the Baseline one is read as the other column of the same table.
# Games missing here have a std in the paper that we have not transcribed.
STD: dict[str, dict[str, float]] = {
    "MLR": {"pong": 3.1, "up_n_down": 531.5, "qbert": 96.3, "breakout": 1.4, "ms_pacman": 249.4},
    "Baseline": {"pong": 11.5, "up_n_down": 919.3, "qbert": 346.6, "breakout": 1.8, "ms_pacman": 124.3},
}


def human_normalized_score(game: str, score: float) -> float:
    """(score - random) / (human - random)."""
    random, human = REFERENCE[game]
    return (score - random) / (human - random)


class PriorityUpdate(pl.Callback):
    """Writes the priorities returned by ``training_step`` (``index``, ``priority``) into this
    rank's prioritized replay. Place it before the checkpoint callback, so that a snapshot holds them."""

    def __init__(self, replay):
        self.replay = replay

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.replay.update_priority(outputs["index"], outputs["priority"])


class AtariDomain:
    name = "atari"
    schema = AtariExperimentConfig
    bounds = BOUNDS
    optimizer_keys = OPTIMIZER_KEYS
    frame_channels = 1  # grayscale
    agent_name = "rainbow"
    agent_class = RainbowMLRAgent
    has_physics = False  # ALE exposes RAM bytes, not physical states

    def validate(self, cfg: DictConfig) -> None:
        validate_atari(cfg)

    def check_task(self, cfg: DictConfig) -> None:
        check_game(cfg.env.task)

    def make_env(self, cfg: DictConfig, seed: int, train: bool = True):
        e = cfg.env
        return make_atari_env(e.task, e.frame_skip, e.image_size, e.frame_stack, e.noop_max, e.repeat_action_probability,
                              e.max_episode_frames, train, seed, e.terminal_on_life_loss, e.clip_rewards,
                              max_steps=None if train else cfg.eval.max_steps, resize=e.resize)

    def make_agent(self, cfg: DictConfig, env) -> RainbowMLRAgent:
        return RainbowMLRAgent(OmegaConf.to_container(cfg, resolve=True), num_actions=env.action_spec.shape[-1])

    def make_replay(self, cfg: DictConfig) -> PrioritizedReplay:
        r, mlr = cfg.replay, cfg.mlr
        return PrioritizedReplay(r.capacity, cfg.env.frame_stack, mlr.seq_len if mlr.enabled else 1,
                                 cfg.rainbow.n_step, cfg.rainbow.discount, r.alpha, r.priority_eps,
                                 cfg.train.batch_size, r.beta_start, r.beta_end, windows=mlr.enabled,
                                 new_priority=new_priority(r.new_priority),
                                 official_nstep_bootstrap=cfg.rainbow.official_nstep_bootstrap)

    def env_steps_per_agent_step(self, cfg: DictConfig) -> int:
        return 1  # the x-axis counts agent steps, each frame_skip emulator frames

    def eval_metrics(self, cfg: DictConfig) -> Callable[[list[float]], dict] | None:
        game = cfg.env.task
        if game not in REFERENCE:
            return None
        return lambda returns: {"eval/hns": human_normalized_score(game, sum(returns) / len(returns))}

    def callbacks(self, cfg: DictConfig, replay: PrioritizedReplay) -> list:
        return [PriorityUpdate(replay)]  # before the snapshot, which holds the priorities

    def normalized_score(self, task: str, score: float) -> float:
        return human_normalized_score(task, score)

    def paper_reference(self, task: str, algorithm: str, budget: int) -> str:
        score = RESULTS.get(algorithm, {}).get(task)  # the paper reports the 100k budget only
        return "" if score is None else f"{score:g}"


ATARI = AtariDomain()
