"""Atari 2600 through gymnasium + ale-py, on the data-efficient Rainbow / SPR / MLR protocol.

``make_atari_env`` returns a TorchRL env whose ``"pixels"`` entry is the stack of the last
``frame_stack`` uint8 grayscale frames ``[frame_stack, 84, 84]`` and whose ``"action"`` is one-hot
``[num_actions]`` int64 (minimal action set). Protocol (the official code's, on rlpyt):

- ``frame_skip`` 4, max-pooling of the last two raw frames, grayscale, bilinear resize to 84x84
  (gymnasium's ``AtariPreprocessing``, which reads the ALE screen directly, with the official
  ``INTER_LINEAR`` resize; ``resize="area"`` keeps gymnasium's ``INTER_AREA``);
- no sticky actions (``repeat_action_probability=0``), 1 to ``noop_max`` random no-ops at reset;
- an episode is capped at ``max_episode_frames`` raw frames (108k = 27k agent steps), marked as a
  truncation (bootstrap), not a termination;
- training only: reward clipped to its sign, and a lost life *terminates* the TorchRL episode while
  the game goes on (the next reset continues from the same screen, as rlpyt's ``episodic_lives``);
- evaluation: raw rewards, and only game over (or the cap) ends an episode.

``episode_reward`` is summed before the clipping, so it is always the raw game score (of one life
in training).
"""

from __future__ import annotations

import copy
import pickle
import warnings
from functools import cache

import gymnasium as gym
import numpy as np
import torch
from torchrl.data import OneHot

from mlr_lightning.envs.stacked import FrameStackEnv


class UnknownGameError(ValueError):
    pass


@cache
def available_games() -> tuple[str, ...]:
    """Every game whose ROM ale-py can find, as snake_case ids (``ms_pacman``, ``up_n_down``)."""
    from ale_py import roms

    return tuple(sorted(game for game in roms.get_all_rom_ids() if _rom_path(game) is not None))


def _rom_path(game: str):
    from ale_py import roms

    try:
        with warnings.catch_warnings():  # ale-py warns before returning None for an unknown id
            warnings.simplefilter("ignore")
            return roms.get_rom_path(game)
    except Exception:  # noqa: BLE001  (ale-py raises different errors for unknown ids and missing files)
        return None


def check_game(game: str) -> str:
    """Returns ``game``; an unknown game or a missing ROM raises :class:`UnknownGameError` listing the available ones."""
    if _rom_path(game) is None:
        raise UnknownGameError(
            f"env.task={game!r} is not an Atari game with a ROM installed (ale-py ships them); "
            f"available: {', '.join(available_games())}"
        )
    return game


class LinearResizePreprocessing(gym.wrappers.AtariPreprocessing):
    """gymnasium's ``AtariPreprocessing`` with the official code's bilinear resize (``cv2.INTER_LINEAR``
    of the max-pooled 210x160 screen) instead of gymnasium's ``INTER_AREA``. Overrides ``_get_obs``
    of gymnasium 1.4 (pinned), for grayscale uint8 observations without a channel axis."""

    def _get_obs(self):
        import cv2

        if self.frame_skip > 1:
            np.maximum(self.obs_buffer[0], self.obs_buffer[1], out=self.obs_buffer[0])
        return cv2.resize(self.obs_buffer[0], self.screen_size, interpolation=cv2.INTER_LINEAR)


class EpisodicLife(gym.Wrapper):
    """A lost life returns ``terminated=True``; the following ``reset`` continues the same game.

    The observation at the life loss is returned by that reset, no frame is played in between, as in
    rlpyt's ``AtariEnv(episodic_lives=True)`` (whose sampler resets only when ``traj_done``). Only a
    real game over (or the frame cap) resets the emulator, with its random no-ops.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.lives = 0
        self.game_over = True
        self.last_obs = None

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = self.env.unwrapped.ale.lives()
        life_lost = 0 < lives < self.lives
        self.lives, self.last_obs = lives, obs
        return obs, reward, terminated or life_lost, truncated, info

    def reset(self, **kwargs):
        if self.game_over or kwargs.get("seed") is not None:
            obs, info = self.env.reset(**kwargs)
            self.game_over = False
        else:
            obs, info = self.last_obs, {}
        self.lives, self.last_obs = self.env.unwrapped.ale.lives(), obs
        return obs, info


class RunningGame(gym.Wrapper):
    """The outermost wrapper: saves and restores the running game for full-state snapshots.

    The emulator state includes its RNG (``cloneState(include_rng=True)``); the no-op RNG is the
    env's numpy generator; the wrappers below keep their per-episode fields (the max-pool frame
    buffer, lives, game-over flag, the observation at a life loss).
    """

    EPISODE_FIELDS = ("obs_buffer", "lives", "game_over", "last_obs")

    def get_state(self) -> dict:
        game = self.env.unwrapped
        return {
            "emulator": pickle.dumps(game.ale.cloneState(include_rng=True)),
            "np_random": game.np_random.bit_generator.state,
            "wrappers": [copy.deepcopy({k: v for k, v in vars(w).items() if k in self.EPISODE_FIELDS})
                         for w in self._wrappers()],
        }

    def set_state(self, state: dict) -> None:
        game = self.env.unwrapped
        game.ale.restoreState(pickle.loads(state["emulator"]))
        game.np_random.bit_generator.state = state["np_random"]
        for wrapper, fields in zip(self._wrappers(), state["wrappers"]):
            vars(wrapper).update(copy.deepcopy(fields))

    def _wrappers(self) -> list[gym.Wrapper]:
        found, env = [], self.env
        while isinstance(env, gym.Wrapper):
            found.append(env)
            env = env.env
        return found


RESIZE = ("linear", "area")  # official (cv2.INTER_LINEAR) / gymnasium's default (cv2.INTER_AREA)


def make_gym_atari(game: str, frame_skip: int, image_size: int, noop_max: int, repeat_action_probability: float,
                   max_episode_frames: int, terminal_on_life_loss: bool, resize: str = "linear") -> gym.Env:
    """The gymnasium env: raw ALE at frameskip 1 under ``AtariPreprocessing`` (+ ``EpisodicLife``)."""
    from ale_py.env import AtariEnv

    check_game(game)
    raw = AtariEnv(
        game=game,
        obs_type="grayscale",  # AtariPreprocessing reads the screen itself; the cheapest raw observation
        frameskip=1,  # AtariPreprocessing skips frames and max-pools the last two
        repeat_action_probability=repeat_action_probability,
        full_action_space=False,
        max_num_frames_per_episode=max_episode_frames,
    )
    preprocessing = LinearResizePreprocessing if resize == "linear" else gym.wrappers.AtariPreprocessing
    env = preprocessing(
        raw, noop_max=noop_max, frame_skip=frame_skip, screen_size=image_size,
        terminal_on_life_loss=False,  # gymnasium's variant restarts the game on life loss; see EpisodicLife
        grayscale_obs=True, scale_obs=False,
    )
    return RunningGame(EpisodicLife(env) if terminal_on_life_loss else env)


class AtariPixelEnv(FrameStackEnv):
    """One game (:func:`make_gym_atari`'s gymnasium env) with one-hot actions."""

    def __init__(self, game: gym.Env, image_size: int, frame_stack: int, max_steps: int | None, clip_rewards: bool):
        super().__init__(game, (1, image_size, image_size), frame_stack, max_steps, clip_rewards)
        self.action_spec = OneHot(int(game.action_space.n), dtype=torch.int64)

    def _game_reset(self) -> np.ndarray:
        return self.game.reset()[0][None]  # [84, 84] -> [1, 84, 84]

    def _game_step(self, action: torch.Tensor) -> tuple[np.ndarray, float, bool, bool]:
        obs, reward, terminated, truncated, _ = self.game.step(int(action.argmax()))
        return obs[None], float(reward), bool(terminated), bool(truncated)

    def _set_seed(self, seed: int | None) -> None:
        self.game.reset(seed=seed)  # gymnasium seeds at a reset, as TorchRL's GymWrapper does


def make_atari_env(
    game: str,
    frame_skip: int,
    image_size: int,
    frame_stack: int,
    noop_max: int,
    repeat_action_probability: float,
    max_episode_frames: int,
    train: bool,
    seed: int,
    terminal_on_life_loss: bool = True,
    clip_rewards: bool = True,
    max_steps: int | None = None,
    resize: str = "linear",
) -> AtariPixelEnv:
    """``train=True`` adds the training-only parts (life loss terminal, reward sign).
    ``max_steps`` optionally truncates episodes after that many agent steps (short evaluations)."""
    game_env = make_gym_atari(game, frame_skip, image_size, noop_max, repeat_action_probability, max_episode_frames,
                              terminal_on_life_loss and train, resize)
    env = AtariPixelEnv(game_env, image_size, frame_stack, max_steps, clip_rewards and train)
    env.set_seed(seed)
    return env
