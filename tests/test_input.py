"""Bad input costs one line naming the key and the fix, exit code 2, and creates nothing; a good run
prints progress and a summary, and no library chatter."""

import dataclasses
import signal
import subprocess
import socket
import time
import typing
from pathlib import Path

import pytest
import torch

from mlr_lightning.cli import main
from mlr_lightning.config import COMMON_BOUNDS
from mlr_lightning.domains import DOMAINS

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "conf" / "quickstart.yaml")


def fit(tmp_path: Path, *args: str) -> int:
    return main(["fit", "--config", QUICKSTART, f"output_dir={tmp_path / 'runs'}", *args])


def one_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert captured.out == ""
    return lines[0]


def closed_port() -> int:
    with socket.socket() as probe:  # bound, never listening: connections are refused
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("override, key", [
    ("encoder.num_filters=0", "encoder.num_filters must be >= 1"),
    ("encoder.num_layers=0", "encoder.num_layers must be >= 1"),
    ("encoder.num_layers=60", "encoder.num_layers (60) leaves no pixels"),
    ("sac.hidden_dim=0", "sac.hidden_dim must be >= 1"),
    ("mlr.patch_size=0", "mlr.patch_size must be >= 1"),
    ("mlr.block_size=0", "mlr.block_size must be >= 1"),
    ("mlr.warmup_steps=0", "mlr.warmup_steps must be >= 1"),
    ("mlr.num_heads=3", "mlr.num_heads (3) must divide encoder.feature_dim"),
    ("seed=-1", "seed must be in [0, 4294967295]"),
    ("sac.actor_lr=-0.001", "sac.actor_lr must be > 0"),
    ("sac.critic_lr=0", "sac.critic_lr must be > 0"),
    ("mlr.lr=-1", "mlr.lr must be > 0"),
    ("trainer.devices=0", "trainer.devices must be >= 1"),
    ("trainer.num_nodes=0", "trainer.num_nodes must be >= 1"),
    ("trainer.devices=2", "trainer.strategy must be 'ddp'"),
    ("trainer.accelerator=tpu", "trainer.accelerator must be one of"),
    ("run_name=../../escaped", "run_name ('../../escaped') must be a plain directory name"),
    ("run_name=..", "run_name ('..') must be a plain directory name"),
    ("env.camera_id=-2", "env.camera_id must be >= 0"),
    ("env.camera_id=7", "env.camera_id=7 is not a camera of cartpole_swingup, which has 2"),
    ("tracking.uri=foo://bar", "tracking.uri=foo://bar: unknown MLflow store scheme 'foo'"),
    ("seed=[1", "override 'seed=[1': the value is not valid YAML"),
    ("=3", "override '=3' needs a dotted key"),
    ("env=3", "env (from command line) is a section of keys"),
    ("sac.critic_lr=inf", "sac.critic_lr must be > 0 and at most 1"),
    ("sac.critic_lr=1e308", "sac.critic_lr must be > 0 and at most 1"),
    ("mlr.lr=nan", "mlr.lr must be > 0 and at most 1"),
    ("replay.capacity=1000000000", "replay.capacity=1000000000: the replay needs"),  # 27 TB of frames
])
def test_bad_override_is_one_line_naming_the_key_and_creates_nothing(override, key, tmp_path, capsys):
    assert fit(tmp_path, override) == 2
    assert key in one_line(capsys)
    assert not any(tmp_path.iterdir()), "a bad config created files"
    assert not (ROOT / "escaped").exists()


def test_unreachable_tracking_server_is_refused_within_seconds(tmp_path, capsys):
    started = time.monotonic()
    assert fit(tmp_path, f"tracking.uri=http://127.0.0.1:{closed_port()}") == 2
    assert time.monotonic() - started < 30
    assert "cannot reach 127.0.0.1" in one_line(capsys)
    assert not any(tmp_path.iterdir())


def test_unresolvable_tracking_host_is_refused_within_seconds(tmp_path, capsys):
    started = time.monotonic()
    assert fit(tmp_path, "tracking.uri=https://mlflow.invalid") == 2
    assert time.monotonic() - started < 30
    assert "tracking.uri=https://mlflow.invalid: cannot reach mlflow.invalid:443" in one_line(capsys)


def test_more_gpus_than_this_machine_has(tmp_path, capsys):
    gpus = torch.cuda.device_count()
    if gpus:
        assert fit(tmp_path, "trainer.accelerator=gpu", f"trainer.devices={gpus + 1}", "trainer.strategy=ddp") == 2
        assert f"trainer.devices={gpus + 1} but this machine has {gpus} CUDA GPU" in one_line(capsys)
    else:
        assert fit(tmp_path, "trainer.accelerator=gpu") == 2
        assert "trainer.accelerator=gpu but this machine has no CUDA GPU" in one_line(capsys)
    assert not any(tmp_path.iterdir())


MALFORMED_YAML = {
    "syntax": (b"env:\n  task: [cartpole_swingup\n", "line 3, column 1: did not find expected ',' or ']'"),
    "tab": (b"env:\n\ttask: cartpole_swingup\n", "line 2, column 1: a tab character"),
    "duplicate": (b"seed: 1\nenv:\n  task: cartpole_swingup\nseed: 2\n", "line 4, column 1: duplicate key 'seed'"),
    "not utf-8": (b"seed: 1\nrun_name: caf\xe9\n", "line 2: byte 0xe9 is not UTF-8 text"),
    "list": (b"- seed: 1\n", "holds a list at the top level"),
    "scalar": (b"42\n", "holds a single value at the top level"),
    "empty": (b"", "holds no settings"),
    "comments only": (b"# nothing here\n", "holds no settings"),
    "section as value": (b"env: 3\n", "env (from"),
}


@pytest.mark.parametrize("name", MALFORMED_YAML)
def test_malformed_yaml_names_the_file_and_line(name, tmp_path, capsys):
    content, message = MALFORMED_YAML[name]
    config = tmp_path / "bad.yaml"
    config.write_bytes(content)
    assert main(["fit", "--config", QUICKSTART, "--config", str(config), f"output_dir={tmp_path / 'runs'}"]) == 2
    line = one_line(capsys)
    assert "bad.yaml" in line and message in line
    assert list(tmp_path.iterdir()) == [config]


def test_output_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "runs").write_text("not a directory")
    assert fit(tmp_path) == 2
    assert f"output_dir={tmp_path / 'runs'}: {tmp_path / 'runs'} is a file" in one_line(capsys)
    assert main(["fit", "--config", QUICKSTART, f"output_dir={tmp_path / 'runs' / 'below'}"]) == 2
    assert "is a file, not a directory" in one_line(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]


def test_read_only_output_dir(tmp_path, capsys):
    """A read-only filesystem (a read-only tmpfs: even root cannot write there) and /sys."""
    locked = tmp_path / "locked"
    locked.mkdir()
    assert subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(locked)]).returncode == 0
    try:
        assert main(["fit", "--config", QUICKSTART, f"output_dir={locked / 'runs'}"]) == 2
        assert f"output_dir={locked / 'runs'}: cannot create files in {locked}" in one_line(capsys)
        assert not any(locked.iterdir())
    finally:
        subprocess.run(["umount", "-l", str(locked)])
    target = Path("/sys/mlr-lightning-test")
    assert main(["fit", "--config", QUICKSTART, f"output_dir={target}"]) == 2
    assert f"output_dir={target}: cannot create files in /sys" in one_line(capsys)
    assert not target.exists()


def test_a_disk_smaller_than_one_snapshot_is_refused_before_training(tmp_path, capsys):
    small = tmp_path / "small"
    small.mkdir()
    assert subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)]).returncode == 0
    try:  # the tiny replay: 1000 frames of 24x24 RGB, 1.6 MiB
        assert main(["fit", "--config", QUICKSTART, "replay.capacity=1000", "env.image_size=24", "env.crop_size=20",
                     "mlr.patch_size=6", f"output_dir={small / 'runs'}"]) == 2
        line = one_line(capsys)
        assert f"output_dir={small / 'runs'}: one snapshot of this run needs at least 2 MiB" in line
        assert "lower replay.capacity" in line
        assert not any(small.iterdir())
    finally:
        subprocess.run(["umount", "-l", str(small)])


def test_sqlite_store_in_an_unwritable_place(tmp_path, capsys):
    (tmp_path / "blocker").write_text("a file where the store's directory should be")
    assert fit(tmp_path, f"tracking.uri=sqlite:///{tmp_path / 'blocker' / 'mlflow.db'}") == 2
    assert "is a file, not a directory" in one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_every_numeric_key_of_every_schema_has_a_bound(domain):
    """A new numeric key gets a bound in config.COMMON_BOUNDS or its domain's ``bounds``, or is named here
    as checked against another key."""
    checked_elsewhere = {"sac.actor_log_std_min", "sac.actor_log_std_max", "rainbow.v_min", "rainbow.v_max"}
    bounds = set(COMMON_BOUNDS) | set(DOMAINS[domain].bounds)
    numeric = set(numeric_keys(DOMAINS[domain].schema))
    assert numeric - checked_elsewhere - bounds == set()
    assert set(DOMAINS[domain].bounds) - numeric == set(), "a bound for a key that the schema lacks (a typo?)"


def test_every_shared_bound_names_a_key_of_some_schema():
    numeric = set().union(*(numeric_keys(domain.schema) for domain in DOMAINS.values()))
    assert set(COMMON_BOUNDS) - numeric == set(), "a bound for a key that no schema has (a typo?)"


def numeric_keys(schema: type, prefix: str = ""):
    hints = typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            yield from numeric_keys(hint, f"{prefix}{field.name}.")
        elif {int, float} & set(typing.get_args(hint) or [hint]):  # int, float, int | None, list[int]
            yield f"{prefix}{field.name}"


# ------------------------------------------------------------------------------ compare, atari-table
def test_compare_negative_budget(tmp_path, capsys):
    assert main(["compare", "--output-dir", str(tmp_path), "--budgets", "-5"]) == 2
    assert "--budgets are environment steps and must be > 0, got -5" in one_line(capsys)
    assert not any(tmp_path.iterdir())


def test_compare_output_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "runs").write_text("x")
    assert main(["compare", "--output-dir", str(tmp_path / "runs")]) == 2
    assert "--output-dir" in one_line(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]


def test_compare_without_a_store_creates_none(tmp_path, capsys):
    assert main(["compare", "--output-dir", str(tmp_path), "--experiment", "x"]) == 2
    assert f"--output-dir={tmp_path}: no MLflow store at {tmp_path / 'mlflow.db'}" in one_line(capsys)
    assert not any(tmp_path.iterdir()), "compare created a store or an output directory"


def test_atari_table_runs_directory_missing(tmp_path, capsys):
    assert main(["atari-table", "--runs", str(tmp_path / "rnus")]) == 2
    assert f"--runs {tmp_path / 'rnus'} is not a directory" in one_line(capsys)
    assert main(["atari-table", "--runs", str(tmp_path)]) == 2
    assert "no finished Atari runs" in one_line(capsys)


@pytest.mark.parametrize("command", ["fit", "grid", "compare", "atari-table"])
def test_help_shows_examples(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    examples = capsys.readouterr().out.split("examples:\n")[1]
    assert f"python -m mlr_lightning {command} " in examples


# ------------------------------------------------------------------------------ what a good run prints
@pytest.mark.slow
def test_fit_prints_progress_and_a_summary_and_no_library_noise(tiny_overrides, tmp_path, run_cli):
    result = run_cli("fit", "--config", "conf/quickstart.yaml", *tiny_overrides, "run_name=quiet",
                     "tracking.video=false", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ours = [line for line in result.stderr.splitlines() if line.startswith("note: ")]  # the MLR warm-up note
    assert len(ours) == 1 and "mlr.warmup_steps" in ours[0]
    noise = [line for line in result.stderr.splitlines() if line not in ours]
    assert noise == [], "library messages on stderr:\n" + "\n".join(noise)
    lines = result.stdout.strip().splitlines()
    run_dir = tmp_path / "runs" / "quiet"
    assert lines[-1].startswith(f"Results: {run_dir}")
    assert any(line.startswith("Training: 320/320 env steps (100%)") for line in lines), result.stdout
    assert any(line.startswith("Final evaluation at env step 320: return ") and " ± " in line for line in lines)
    assert any(line.startswith("Wall time: ") for line in lines)
    assert f"MLflow: mlflow ui --backend-store-uri sqlite:///{tmp_path / 'runs' / 'mlflow.db'}" in lines
    assert not any(noise in result.stdout for noise in ("Epoch 0", "[torchrl]", "\x1b[", "it/s", "GPU available"))


# ------------------------------------------------- hostile input: one line, exit 2, within seconds
def test_sync_against_an_unreachable_server_is_one_line_within_seconds(tmp_path, capsys):
    started = time.monotonic()
    assert main(["sync", str(tmp_path), "--tracking-uri", f"http://127.0.0.1:{closed_port()}"]) == 2
    assert time.monotonic() - started < 15
    assert "--tracking-uri http://127.0.0.1" in one_line(capsys)


@pytest.mark.parametrize("address, message", [
    ("CLOSED", "cannot reach 127.0.0.1"),
    ("garbage", "--address garbage: expected auto or HOST:PORT"),
    ("ray.invalid:6379", "cannot reach ray.invalid:6379"),
])
def test_sweep_address_that_cannot_be_reached_is_one_line_within_seconds(address, message, tmp_path, capsys):
    address = f"127.0.0.1:{closed_port()}" if address == "CLOSED" else address
    started = time.monotonic()
    assert main(["sweep", "--config", str(ROOT / "conf" / "sweeps" / "quickstart.yaml"), "--address", address,
                 f"output_dir={tmp_path / 'runs'}", "tracking.mlflow=false"]) == 2  # a local store is refused first
    assert time.monotonic() - started < 15
    assert message in one_line(capsys)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("variable, value", [("MUJOCO_GL", "garbage"), ("PYOPENGL_PLATFORM", "garbage")])
def test_a_rendering_variable_that_names_no_backend_is_one_line(variable, value, tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv(variable, value)  # the CLI's process inherits it
    result = run_cli("fit", "--config", QUICKSTART, f"output_dir={tmp_path / 'runs'}", timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"{variable}=garbage" in line
    assert not any(tmp_path.iterdir())


def test_overrides_may_follow_options(tmp_path, capsys):
    assert main(["fit", "--config", QUICKSTART, "seed=5", "--print-config", "run_name=late"]) == 0
    printed = capsys.readouterr().out
    assert "seed: 5\n" in printed.splitlines(keepends=True) and "run_name: late\n" in printed.splitlines(keepends=True)



@pytest.mark.parametrize("after_s", [0.3, 1.5, 3.0])  # while torch imports, the CLI loads, the config is checked
def test_ctrl_c_during_start_up_is_one_line_without_a_traceback(after_s, start_cli, tmp_path):
    process = start_cli("fit", "--config", QUICKSTART, f"output_dir={tmp_path / 'runs'}")
    time.sleep(after_s)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    # Python may end by SIGINT itself (the convention for a Ctrl-C: a shell reads 130 either way).
    assert process.returncode in (130, -signal.SIGINT), err
    assert "Traceback" not in err, err
    if "Training:" not in err and "SIGINT: stopped at env step" not in err:  # it stopped before training: one line
        assert len(err.strip().splitlines()) == 1 and err.startswith("interrupted during start-up: "), err
