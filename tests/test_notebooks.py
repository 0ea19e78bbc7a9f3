"""Both notebooks run top to bottom against real tiny runs and produce their figures and tables."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(name: str, **params) -> nbformat.NotebookNode:
    """Run a notebook with ``params`` appended to its parameter cell (as papermill injects them)."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "\n# Injected by the test\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def outputs(nb, mime: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if mime in o.get("data", {})]


@pytest.mark.slow
def test_latent_cosine_similarity_notebook(tiny_experiment):
    nb = execute("latent_cosine_similarity.ipynb", TRACKING_URI=tiny_experiment["uri"], EXPERIMENT="tiny")
    assert len(outputs(nb, "image/png")) == 2, "similarity matrices and similarity-vs-distance figures"
    runs, summary, reconstruction, probe = [t["data"]["text/html"] for t in outputs(nb, "text/html")]
    assert "cartpole_swingup" in runs and "Baseline" in runs
    mlr_seed, baseline_seed = re.search(r"<th>seed</th>\s*<td>(\w+)</td>\s*<td>(\w+)</td>", runs).groups()
    assert mlr_seed == baseline_seed, "MLR and Baseline are paired by seed"
    assert "untrained (init 0)" in probe and "shuffled states (control)" in probe and "R² cos hinge_1" in probe
    for reference in ("shuffled pairs", "untrained"):
        assert reference in summary and reference in reconstruction
    assert "masked (first block)" in reconstruction and "uncentred" in reconstruction


@pytest.mark.slow
def test_latent_cosine_similarity_notebook_on_atari_runs(tiny_atari_experiment):
    nb = execute("latent_cosine_similarity.ipynb", TRACKING_URI=tiny_atari_experiment["uri"], EXPERIMENT="tiny_atari")
    assert len(outputs(nb, "image/png")) == 2
    runs, summary, reconstruction = [t["data"]["text/html"] for t in outputs(nb, "text/html")]
    assert "pong" in runs and "atari" in runs and "untrained" in reconstruction
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "No probe: the probe regresses dm_control simulator states, which this run's domain (atari) does not have" in printed


@pytest.mark.slow
def test_compare_runs_notebook(tiny_experiment, tmp_path):
    nb = execute("compare_runs.ipynb", TRACKING_URI=tiny_experiment["uri"], EXPERIMENT="tiny", BUDGETS=[160, 320],
                 OUT_DIR=str(tmp_path), BOOTSTRAP_REPS=100, DRILL_DOWN_RUN="tiny-cartpole_swingup-baseline-s2")
    html = [o["data"]["text/html"] for o in outputs(nb, "text/html")]
    assert any("cartpole_swingup" in h for h in html) and any("Optimality gap" in h for h in html)
    assert any("P(X &gt; Y)" in h or "P(X > Y)" in h for h in html), "the probability of improvement table"
    # curves, two performance profiles, two aggregate-interval figures, the IQM curves and the drill-down
    assert len(outputs(nb, "image/png")) >= 7
    assert (tmp_path / "per_task.csv").exists() and (tmp_path / "scores_320.npz").exists()
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "Drill-down: tiny-cartpole_swingup-baseline-s2 (cartpole_swingup, Baseline, seed 2)" in printed


@pytest.mark.slow
def test_compare_runs_notebook_defaults_take_the_budgets_from_the_data(tiny_experiment, tmp_path):
    """As right after the quickstart: no budgets given, the runs end at 320 env steps."""
    nb = execute("compare_runs.ipynb", TRACKING_URI=tiny_experiment["uri"], EXPERIMENT="tiny", OUT_DIR=str(tmp_path),
                 BOOTSTRAP_REPS=100)
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "final evaluations are at 0 env steps" not in printed and "320 env steps (4 runs)" in printed
    assert "Budgets (env steps): [320]" in printed
    assert (tmp_path / "aggregate_320.csv").exists() and (tmp_path / "performance_profile_320.png").exists()
