"""The MLR paper's reported numbers and the Atari-100k reference scores.

DMC: mean ± std over 10 seeds at 100k and 500k environment steps, from the result figure of the
official repository (microsoft/Mask-based-Latent-Reconstruction, ``figs/DMC.png``). Atari: raw scores
from ``figs/Atari_Full.png``, and the random and human scores of the official code
(``Atari/src/rlpyt_utils.py``) that define the human-normalised score. Used by ``compare`` and
``atari-table`` as the reference column and for score normalisation.
"""

from __future__ import annotations

# DMControl mean ± std over 10 seeds, at 100k and 500k environment steps [README fig: figs/DMC.png].
DMC_RESULTS: dict[str, dict[str, dict[int, tuple[float, float]]]] = {
    "finger_spin": {"MLR": {100_000: (907, 58), 500_000: (973, 31)}, "Baseline": {100_000: (853, 112), 500_000: (944, 97)}},
    "cartpole_swingup": {"MLR": {100_000: (806, 48), 500_000: (872, 5)}, "Baseline": {100_000: (784, 63), 500_000: (871, 4)}},
    "reacher_easy": {"MLR": {100_000: (866, 103), 500_000: (957, 41)}, "Baseline": {100_000: (593, 118), 500_000: (943, 52)}},
    "cheetah_run": {"MLR": {100_000: (482, 38), 500_000: (674, 37)}, "Baseline": {100_000: (399, 80), 500_000: (602, 67)}},
    "walker_walk": {"MLR": {100_000: (643, 114), 500_000: (939, 10)}, "Baseline": {100_000: (424, 281), 500_000: (818, 263)}},
    "ball_in_cup_catch": {"MLR": {100_000: (933, 16), 500_000: (964, 14)}, "Baseline": {100_000: (648, 287), 500_000: (960, 10)}},
}
DMC_MAX_RETURN = 1000.0  # dm_control rewards are in [0, 1] per step over 1000 steps

# Atari-100k: game -> (random, human) reference scores [code: Atari/src/rlpyt_utils.py].
ATARI_REFERENCE: dict[str, tuple[float, float]] = {
    "alien": (227.8, 7127.7), "amidar": (5.8, 1719.5), "assault": (222.4, 742.0), "asterix": (210.0, 8503.3),
    "bank_heist": (14.2, 753.1), "battle_zone": (2360.0, 37187.5), "boxing": (0.1, 12.1), "breakout": (1.7, 30.5),
    "chopper_command": (811.0, 7387.8), "crazy_climber": (10780.5, 35829.4), "demon_attack": (152.1, 1971.0),
    "freeway": (0.0, 29.6), "frostbite": (65.2, 4334.7), "gopher": (257.6, 2412.5), "hero": (1027.0, 30826.4),
    "jamesbond": (29.0, 302.8), "kangaroo": (52.0, 3035.0), "krull": (1598.0, 2665.5),
    "kung_fu_master": (258.5, 22736.3), "ms_pacman": (307.3, 6951.6), "pong": (-20.7, 14.6),
    "private_eye": (24.9, 69571.3), "qbert": (163.9, 13455.0), "road_runner": (11.5, 7845.0),
    "seaquest": (68.4, 42054.7), "up_n_down": (533.4, 11693.2),
}

# Atari-100k raw scores of MLR and its Baseline [README fig: figs/Atari_Full.png].
ATARI_RESULTS: dict[str, dict[str, float]] = {
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
ATARI_STD: dict[str, dict[str, float]] = {
    "MLR": {"pong": 3.1, "up_n_down": 531.5, "qbert": 96.3, "breakout": 1.4, "ms_pacman": 249.4},
    "Baseline": {"pong": 11.5, "up_n_down": 919.3, "qbert": 346.6, "breakout": 1.8, "ms_pacman": 124.3},
}
ATARI_SEEDS = 3  # "averaged over 3 random seeds and each run is evaluated with 100 episodes"


def human_normalized_score(game: str, score: float) -> float:
    """(score - random) / (human - random)."""
    random, human = ATARI_REFERENCE[game]
    return (score - random) / (human - random)


def _dmc_reference(task: str, algorithm: str, budget: int) -> str:
    mean_std = DMC_RESULTS.get(task, {}).get(algorithm, {}).get(budget)
    return "" if mean_std is None else f"{mean_std[0]:g}±{mean_std[1]:g}"


def _atari_reference(task: str, algorithm: str, budget: int) -> str:
    score = ATARI_RESULTS.get(algorithm, {}).get(task)  # the paper reports the 100k budget only
    return "" if score is None else f"{score:g}"


# Per domain: score -> a common [0, 1]-ish scale for aggregation (DMC return / 1000, Atari HNS),
# and the paper's number as printed.
NORMALIZERS = {"dmc": lambda task, score: score / DMC_MAX_RETURN, "atari": human_normalized_score}
REFERENCES = {"dmc": _dmc_reference, "atari": _atari_reference}


def normalized_score(domain: str, task: str, score: float) -> float:
    return NORMALIZERS[domain](task, score)


def paper_reference(domain: str, task: str, algorithm: str, budget: int) -> str:
    """The paper's number as printed, or '' where the paper reports none."""
    return REFERENCES[domain](task, algorithm, budget)
