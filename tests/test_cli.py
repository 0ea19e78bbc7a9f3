"""The command line, end to end, on a real dm_control task; and the import order of every entry point."""

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mlr_lightning.cli import main
from tests.conftest import with_repo_on_path

ROOT = Path(__file__).resolve().parents[1]

def test_help_lists_the_commands(run_cli):
    result = run_cli("--help")
    assert result.returncode == 0 and "fit" in result.stdout


@pytest.mark.slow
def test_fit_end_to_end_writes_a_checkpoint_with_finite_losses(tiny_overrides, tmp_path, run_cli):
    result = run_cli("fit", "--config", "conf/quickstart.yaml", *tiny_overrides, "run_name=e2e", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "e2e"
    assert result.stdout.strip().splitlines()[-1].startswith(f"Results: {run_dir}")
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.env.task == "cartpole_swingup" and saved.env.image_size == 24, "resolved config with overrides"

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    state = ckpt["state_dict"]
    updates = 320 // 8 - 20
    assert int(state["num_updates"]) == updates
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert {"critic.encoder.fc.weight", "decoder.action_embedding.weight", "target_encoder.fc.weight"} <= set(state)
    assert not any(k.startswith("policy.") for k in state), "the actor is stored once"
    stream = torch.load((run_dir / "checkpoints" / "last.ckpt").resolve().parent / "stream-rank0.pt", weights_only=False)
    assert stream["counters"]["agent_steps"] == 320 // 8

    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    for key in ("train/critic_loss", "train/actor_loss", "train/mlr_loss", "train/alpha"):
        values = [float(r[key]) for r in rows if r.get(key)]
        assert values and all(math.isfinite(v) for v in values), key
    evals = [(int(float(r["env_steps"])), float(r["eval/return_mean"])) for r in rows if r.get("eval/return_mean")]
    assert [s for s, _ in evals] == [0, 160, 320], "evaluations at every eval_every env steps and at the end"


@pytest.mark.parametrize(
    "args, message",
    [
        (["mlr.seq_len=5"], "mlr.seq_len (5) must be divisible by mlr.block_size (4)"),
        (["mlr.maskratio=0.3"], "unknown config key 'mlr.maskratio'"),
        (["env.task=cartpole_swing"], "env.task='cartpole_swing' is not a dm_control suite task"),
    ],
)
def test_bad_input_exits_with_a_message_and_builds_nothing(args, message, tmp_path, capsys):
    code = main(["fit", "--config", str(ROOT / "conf/quickstart.yaml"), f"output_dir={tmp_path}", *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "a run directory was created for a bad config"


@pytest.mark.parametrize("name", ["package + env", "cli", "tests"])
def test_entry_points_import_torch_stack_before_dm_control(name, repo_root):
    """A fresh interpreter that enters through each entry point and then renders must not crash.

    Importing dm_control with MUJOCO_GL=egl before triton segfaults; each entry point imports
    mlr_lightning (which imports torch, tensordict and torchrl) first.
    """
    first = {"package + env": "import mlr_lightning.envs.dmc as m",
             "cli": "import mlr_lightning.cli, mlr_lightning.training.experiment as m",
             "tests": "import tests.conftest, mlr_lightning.training.experiment as m"}[name]
    code = (
        f"{first}\n"
        "import sys\n"
        "assert 'triton' in sys.modules or 'torchrl' in sys.modules\n"
        "from mlr_lightning.envs.dmc import make_dmc_env\n"
        "env = make_dmc_env('cartpole_swingup', 8, 24, 0, 3, True, 0)\n"
        "import torch._dynamo  # pulls in triton after dm_control: must not crash\n"
        "print(env.rollout(3)['next', 'pixels'].shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=300,
                            env=with_repo_on_path(dict(os.environ)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch.Size([3, 9, 24, 24])" in result.stdout


def test_grid_prints_one_validated_command_per_run(capsys):
    code = main(["grid", "--config", str(ROOT / "conf/dmc/walker_walk.yaml"), "--seeds", "1", "2", "3",
                 "--vary", "mlr.enabled=true,false", "--experiment", "ablation", "--print-only", "train.batch_size=256"])
    assert code == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 6
    assert all(c.startswith("python -m mlr_lightning fit --config ") and "tracking.experiment=ablation" in c
               and "train.batch_size=256" in c for c in commands)
    assert {c.split("seed=")[1] for c in commands} == {"1", "2", "3"}
    assert sum("mlr.enabled=false" in c for c in commands) == 3


def test_grid_validates_every_run_before_starting(capsys):
    code = main(["grid", "--config", str(ROOT / "conf/dmc/walker_walk.yaml"), "--vary", "mlr.seq_len=16,12", "--print-only"])
    assert code == 2
    assert "mlr.seq_len (12) must be divisible by mlr.block_size (8)" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("missing, extra", [("rliable", "analysis"), ("ray", "sweep")])
def test_a_command_whose_optional_package_is_missing_names_the_extra_in_one_line(missing, extra, tiny_experiment,
                                                                                  tmp_path):
    """A bare install (no extras) runs fit; compare and sweep say which extra they need, not a traceback."""
    command = {"rliable": ["compare", "--experiment", tiny_experiment["experiment"], "--tracking-uri",
                           tiny_experiment["uri"], "--output-dir", str(tmp_path)],
               "ray": ["sweep", "--config", "conf/sweeps/quickstart.yaml", f"output_dir={tmp_path}"]}[missing]
    code = (f"import sys; sys.modules[{missing!r}] = None\n"  # import {missing} now raises ModuleNotFoundError
            f"from mlr_lightning.cli import main; sys.exit(main({command!r}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env=with_repo_on_path(dict(os.environ)), timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "Traceback" not in result.stderr
    assert f"mlr_lightning[{extra}]" in result.stderr and missing in result.stderr
