"""The official-behaviour presets agree with the deviations tables: every switch a table names is set
in its domain's preset (and nothing else), and the merged config is the one ``fit`` would run."""

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mlr_lightning.cli import main
from mlr_lightning.config import flatten
from mlr_lightning.domains import load_config

ROOT = Path(__file__).resolve().parents[1]


def official_switches(section: str) -> dict[str, str]:
    """``key=value`` pairs of the "official switch" column of one table of docs/deviations.md."""
    text = (ROOT / "docs" / "deviations.md").read_text()
    table = text.split(f"## {section}")[1].split("\n## ")[0]
    header, _, *rows = [line for line in table.splitlines() if line.startswith("|")]
    column = [c.strip() for c in header.strip("|").split("|")].index("official switch")
    switches = {}
    for row in rows:
        cell = [c.strip() for c in row.strip("|").split("|")][column]
        if cell.startswith("`"):  # "—" (already our default) and "none" name no switch
            switches.update(dict(pair.split("=", 1) for pair in re.findall(r"`([\w.]+=[^`]+)`", cell)))
    return switches


@pytest.mark.parametrize("section, task, preset", [
    ("DeepMind Control", "conf/dmc/walker_walk.yaml", "conf/dmc/official.yaml"),
    ("Atari-100k", "conf/atari/pong.yaml", "conf/atari/official.yaml"),
])
def test_the_preset_sets_every_official_switch_of_its_table(section, task, preset, capsys):
    switches = official_switches(section)
    assert len(switches) >= 3, f"no switches found in the {section} table"
    preset_keys = {k: v for k, v in flatten(OmegaConf.to_container(OmegaConf.load(ROOT / preset))).items()
                   if k != "domain"}
    assert set(preset_keys) == set(switches), "the preset and the deviations table name different switches"
    assert main(["fit", "--config", str(ROOT / task), "--config", str(ROOT / preset), "--print-config"]) == 0
    merged = flatten(OmegaConf.to_container(OmegaConf.create(capsys.readouterr().out)))
    default = flatten(OmegaConf.to_container(load_config(ROOT / task)))
    for key, value in switches.items():
        assert str(merged[key]).lower() == value.lower().strip("'\""), key
        assert merged[key] != default[key], f"{key}={value} is already the default: not a switch"
