"""Shared fixtures and helpers: tiny but real configurations (real dm_control rendering, real
Lightning), the command line in a fresh interpreter, environments of either domain.

Tests take what they share from here as fixtures; no test module imports another.
"""

import mlr_lightning  # noqa: F401  (torch/tensordict/torchrl before dm_control: see the package docstring)

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from mlr_lightning.domains import load_config
from mlr_lightning.domains import domain_of

ROOT = Path(__file__).resolve().parents[1]

# A real cartpole_swingup agent shrunk to run in seconds on 2 CPU cores: 24x24 renders cropped to
# 20, a 4x4 grid of 6-px mask patches, a 2-layer encoder with 8 filters.
TINY_OVERRIDES = [
    "env.task=cartpole_swingup",
    "env.action_repeat=8",
    "env.image_size=24",
    "env.crop_size=20",
    "env.fast_render=true",
    "encoder.num_layers=2",
    "encoder.num_filters=8",
    "sac.hidden_dim=32",
    "mlr.patch_size=6",
    "mlr.seq_len=4",
    "mlr.block_size=2",
    "mlr.batch_size=3",
    "train.batch_size=8",
    "train.init_steps=20",
    "train.num_env_steps=320",
    "replay.capacity=1000",
    "eval.every_env_steps=160",
    "eval.num_episodes=1",
    "trainer.accelerator=cpu",
    "trainer.log_every_updates=5",
    "trainer.checkpoint_every_updates=10",
]


def with_repo_on_path(env: dict) -> dict:
    """``env`` with this checkout first on ``PYTHONPATH``, ahead of (not instead of) the paths already
    there: some installs find their packages through ``PYTHONPATH``."""
    return env | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))}


def _cli_env() -> dict:
    """This environment, less the MLflow URI that in-process runs of earlier tests exported
    (``mlflow.set_tracking_uri`` writes it to ``os.environ``)."""
    env = with_repo_on_path(dict(os.environ))
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _run_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlr_lightning", *args], cwd=ROOT, env=_cli_env(),
                          capture_output=True, text=True, **kwargs)


def _start_cli(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mlr_lightning", *args], cwd=ROOT, env=_cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(*args, timeout=...)``: ``python -m mlr_lightning ...`` in a fresh interpreter, from the
    repository root; returns the completed process (stdout and stderr as text)."""
    return _run_cli


@pytest.fixture(scope="session")
def start_cli():
    """``start_cli(*args)``: the same, started in the background (a ``Popen`` with piped output)."""
    return _start_cli


@pytest.fixture(scope="session")
def tiny_base_overrides() -> list[str]:
    """The tiny agent's overrides, without an output directory."""
    return list(TINY_OVERRIDES)


@pytest.fixture(scope="session")
def make_env():
    """``make_env(cfg, seed, train=True)``: the configured domain's environment."""
    return lambda cfg, seed, train=True: domain_of(cfg).make_env(cfg, seed, train)


@contextlib.contextmanager
def _files_refused_past(max_bytes: int = 1024):
    """The kernel refuses file writes past ``max_bytes`` (RLIMIT_FSIZE: EFBIG, as a full disk's ENOSPC)."""
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, limits[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)


@pytest.fixture(scope="session")
def files_refused():
    """``with files_refused(): ...``: writes past 1 kB fail in this process, as on a full disk."""
    return _files_refused_past


@pytest.fixture
def one_thread():
    """On a shared 2-core machine two processes with 2 OpenMP threads each oversubscribe the cores and
    a test slows from ~7 s to ~80 s; one thread keeps it steady (timing is not what tests check)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_overrides(tmp_path):
    return TINY_OVERRIDES + [f"output_dir={tmp_path / 'runs'}"]


@pytest.fixture
def tiny_cfg(tiny_overrides):
    return load_config(None, tiny_overrides)


@pytest.fixture(scope="session")
def tiny_experiment(tmp_path_factory):
    """A real MLflow experiment made by the CLI's ``grid``: MLR on/off x 2 seeds of the tiny agent."""
    from mlr_lightning.cli import main

    out = tmp_path_factory.mktemp("experiment")
    code = main(["grid", "--config", "conf/quickstart.yaml", "--seeds", "1", "2", "--vary", "mlr.enabled=true,false",
                 "--experiment", "tiny", *TINY_OVERRIDES, f"output_dir={out}", "tracking.video=false"])
    assert code == 0
    return {"output_dir": out, "uri": f"sqlite:///{out / 'mlflow.db'}", "experiment": "tiny"}


def _collect(env, steps: int):
    """``steps`` agent steps of ``env`` with uniformly random actions, as the training collector
    hands them to the replay (one at a time), stacked; ``("collector", "traj_ids")`` numbers their episodes."""
    from tensordict.nn import TensorDictModule

    from mlr_lightning.data.stream import make_collector

    policy = TensorDictModule(lambda pixels: env.action_spec.rand(), in_keys=["pixels"], out_keys=["action"])
    writer = StepList()
    collector = make_collector(env, policy, writer, total_agent_steps=steps, init_steps=steps, policy_device=torch.device("cpu"))
    for _ in collector:
        pass
    collector.shutdown()
    data = torch.stack(writer.steps)
    ends = data["next", "done"].reshape(-1).long()
    data["collector", "traj_ids"] = torch.cumsum(ends, 0) - ends  # episode numbers, as the stream counts them
    return data


class StepList:
    """A collector's writer that keeps a copy of each step."""

    def __init__(self):
        self.steps = []

    @property
    def write_count(self) -> int:
        return len(self.steps)

    def add(self, step):
        self.steps.append(step.clone())


@pytest.fixture(scope="session")
def collect():
    """``collect(env, steps)``: real collector data of ``env`` (random actions)."""
    return _collect


@pytest.fixture(scope="session")
def collected(tiny_base_overrides):
    """Three real cartpole episodes (125 agent steps each at action repeat 8) of the tiny config's
    24x24 renders, random actions, as the collector delivers them (one agent step per batch)."""
    cfg = load_config(None, tiny_base_overrides)
    return _collect(domain_of(cfg).make_env(cfg, 0), 3 * 125)


@pytest.fixture(scope="session")
def fill_replay():
    """``fill_replay(data, capacity, seq_len=4, batch_size=1, window_batch_size=1)``: a ``UniformReplay``
    (3 stacked frames) written one agent step at a time, as during training."""
    from mlr_lightning.data.replay import UniformReplay

    def fill(data, capacity, seq_len=4, batch_size=1, window_batch_size=1):
        replay = UniformReplay(capacity, 3, seq_len, batch_size=batch_size, window_batch_size=window_batch_size)
        for t in range(len(data)):
            replay.extend(data[t : t + 1], data["collector", "traj_ids"][t : t + 1])
        return replay

    return fill


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with its own sqlite store, in its own process group (its job
    workers outlive the parent if only the parent is stopped). ``stop`` and ``start`` again keep
    the port and the store: a server that goes down and comes back."""

    def __init__(self, directory: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.directory, self.url, self.proc = directory, f"http://127.0.0.1:{self.port}", None

    def start(self) -> None:
        mlflow = Path(sys.executable).with_name("mlflow")
        self.proc = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{self.directory / 'server.db'}",
             "--default-artifact-root", (self.directory / "artifacts").as_uri(), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        pytest.fail("mlflow server did not start within 120 s")

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None


@pytest.fixture
def mlflow_server_factory(tmp_path):
    """``mlflow_server_factory()`` starts a server (stopped at the end of the test) and returns it."""
    servers = []

    def start() -> MlflowServer:
        server = MlflowServer(tmp_path / f"mlflow-server-{len(servers)}")
        server.directory.mkdir()
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def mlflow_server(mlflow_server_factory) -> str:
    """The URL of a real MLflow server on localhost."""
    return mlflow_server_factory().url


# A real Atari (Pong) Rainbow+MLR agent, the paper's network, run for 60 agent steps: 40 random, 20 updates.
TINY_ATARI_OVERRIDES = [
    "rainbow.hidden_dim=32",
    "rainbow.num_atoms=11",
    "mlr.decoder_dim=16",
    "train.num_env_steps=60",
    "train.init_steps=40",
    "train.batch_size=4",
    "replay.capacity=1000",
    "eval.num_episodes=1",
    "eval.max_steps=50",
    "trainer.log_every_updates=5",
    "trainer.checkpoint_every_updates=10",
]


@pytest.fixture(scope="session")
def tiny_atari_experiment(tmp_path_factory):
    """A real MLflow experiment of the tiny Atari agent made by ``grid``: MLR on/off, seed 1."""
    from mlr_lightning.cli import main

    out = tmp_path_factory.mktemp("atari_experiment")
    code = main(["grid", "--config", "conf/atari/quickstart.yaml", "--seeds", "1", "--vary", "mlr.enabled=true,false",
                 "--experiment", "tiny_atari", *TINY_ATARI_OVERRIDES, f"output_dir={out}", "tracking.video=false"])
    assert code == 0
    return {"output_dir": out, "uri": f"sqlite:///{out / 'mlflow.db'}", "experiment": "tiny_atari"}


@pytest.fixture(scope="session")
def tiny_atari_base_overrides() -> list[str]:
    """The tiny Atari agent's overrides (on conf/atari/quickstart.yaml), without an output directory."""
    return list(TINY_ATARI_OVERRIDES)
