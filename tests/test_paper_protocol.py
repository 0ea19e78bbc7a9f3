"""The Atari protocol of the paper's own tables: λ per game (its hyperparameter table, Table 13), 3 seeds
with 100 evaluation episodes, and the per-game std over those seeds (Table 6) beside the mean."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mlr_lightning.cli import main
from mlr_lightning.domains import load_config
from mlr_lightning.domains.atari import REFERENCE, STD
from mlr_lightning.reporting.atari_table import atari_table, format_table
from mlr_lightning.sweep.spec import expand, load_sweep

ROOT = Path(__file__).resolve().parents[1]
PAPER_MLR_WEIGHT = {"pong": 5.0, "up_n_down": 5.0}  # Table 13; every other game: 1


@pytest.mark.parametrize("game", ["pong", "up_n_down"])
def test_print_config_shows_the_paper_weight_for_pong_and_up_n_down(game, capsys):
    assert main(["fit", "--config", str(ROOT / f"conf/atari/{game}.yaml"), "--print-config"]) == 0
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed.mlr.weight == 5.0


def test_every_game_file_has_the_paper_tables_mlr_weight():
    games = sorted(REFERENCE)
    assert len(games) == 26
    for game in games:
        cfg = load_config(ROOT / f"conf/atari/{game}.yaml")
        assert cfg.mlr.weight == PAPER_MLR_WEIGHT.get(game, 1.0), game


def test_the_atari_sweep_is_26_games_x_3_seeds_x_2_with_100_evaluation_episodes(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    sweep, overrides = load_sweep("conf/sweeps/atari100k.yaml", [f"output_dir={tmp_path}"])
    plan = expand(sweep, overrides)
    assert len(plan.trials) == 26 * 3 * 2 == 156
    assert sorted({t.overrides[-1] for t in plan.trials}) == ["seed=1", "seed=2", "seed=3"]
    for trial in plan.trials[:: 26]:
        assert load_config(trial.config, list(trial.overrides)).eval.num_episodes == 100
    more, _ = load_sweep("conf/sweeps/atari100k.yaml", ["seeds=[1,2,3,4,5,6,7,8,9,10]", f"output_dir={tmp_path}"])
    assert len(expand(more).trials) == 520  # the one-key override the docs show


def test_atari_table_shows_the_paper_std_beside_its_mean():
    table = atari_table()
    pong = table[table["game"] == "pong"].iloc[0]
    assert (pong["paper Baseline"], pong["paper Baseline std"]) == (-3.1, 11.5)
    assert (pong["paper MLR"], pong["paper MLR std"]) == (4.9, 3.1)
    text = format_table(table, with_runs=False)
    assert "| paper MLR | paper MLR std |" in text
    assert STD["MLR"]["up_n_down"] == 531.5 and STD["Baseline"]["qbert"] == 346.6
