"""Checks of a loaded config against this machine, before anything is created.

:mod:`mlr_lightning.config` checks what a config says; this module checks whether this machine can run
it: the output directory can be written, the accelerator exists, the MLflow store can be reached. Each
failure is a one-line :class:`ConfigError` naming the key and the fix, raised before a run directory
or an MLflow run exists. Every check takes bounded time (a 3 s connection attempt at most).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit

from omegaconf import DictConfig

from mlr_lightning.config import ConfigError

CONNECT_TIMEOUT_S = 3.0
# MLflow tracking stores by URI scheme; database schemes may name a driver ("postgresql+psycopg2").
SERVER_PORTS = {"http": 80, "https": 443}
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
LOCAL_SCHEMES = ("sqlite", "file", "")
OTHER_SCHEMES = ("databricks", "databricks-uc", "uc")
STORE_HELP = "use sqlite:///path/mlflow.db, a path, http(s)://host:port, postgresql://, mysql:// or mssql://"


def preflight(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` if this machine cannot run ``cfg``; creates nothing."""
    check_output_dir(Path(cfg.output_dir), cfg.run_name)
    check_accelerator(cfg.trainer.accelerator, cfg.trainer.devices)
    check_replay_fits(cfg)
    if cfg.tracking.mlflow:
        if importlib.util.find_spec("mlflow") is None:  # an optional extra (pyproject.toml)
            raise ConfigError("tracking.mlflow=true: MLflow is not installed; pip install 'mlr_lightning[mlflow]' "
                              "or set tracking.mlflow=false")
        check_tracking_uri(*tracking_store(cfg.tracking.uri, cfg.output_dir, "tracking.uri", "output_dir"))


def replay_frame_bytes(cfg: DictConfig) -> int:
    """Bytes of the frames a full replay holds on one rank (uint8; DMC: RGB, Atari: grayscale): a
    lower bound of its memory and of its part of every snapshot (snapshots write the whole capacity)."""
    # Imported here, not at the top: the CLI imports preflight before it checks the GL backend, which
    # the domains' environment modules must not load first.
    from mlr_lightning.domains import domain_of

    channels = domain_of(cfg).frame_channels
    return int(cfg.replay.capacity) * channels * int(cfg.env.image_size) ** 2


def check_replay_fits(cfg: DictConfig) -> None:
    """The replay fits in this machine's available memory (when it is kept on the host; a GPU's memory
    is checked when the replay is placed), and one snapshot of it fits on the disk of ``output_dir``."""
    frames = replay_frame_bytes(cfg)
    what = f"replay.capacity={cfg.replay.capacity} frames of {frames // cfg.replay.capacity} bytes"
    device = cfg.replay.get("device", "cpu")
    on_host = device == "cpu" or (device == "auto" and (cfg.trainer.accelerator == "cpu" or not cuda_devices()))
    available = available_memory()
    if on_host and available is not None and frames * cfg.trainer.devices > available:
        raise ConfigError(f"replay.capacity={cfg.replay.capacity}: the replay needs {frames * cfg.trainer.devices / 2**30:.1f} "
                          f"GiB of memory ({what} per rank), and {available / 2**30:.1f} GiB is available; lower "
                          "replay.capacity")
    output = Path(cfg.output_dir).expanduser().absolute()
    existing = next(p for p in (output, *output.parents) if os.access(p, os.F_OK))
    free = shutil.disk_usage(existing).free
    if frames * cfg.trainer.devices > free:
        raise ConfigError(f"output_dir={cfg.output_dir}: one snapshot of this run needs at least "
                          f"{frames * cfg.trainer.devices / 2**20:.0f} MiB ({what} per rank) and {existing} has "
                          f"{free / 2**20:.0f} MiB free; free space, choose another output_dir or lower replay.capacity")


def available_memory() -> int | None:
    """The kernel's estimate of memory available to a new process (Linux), else None (not checked)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# What MuJoCo (MUJOCO_GL) and PyOpenGL (PYOPENGL_PLATFORM) accept on Linux; both are read once, when
# dm_control is first imported (by TorchRL, while the config loads), so they are checked before anything.
MUJOCO_GL_VALUES = ("egl", "osmesa", "glfw", "glx", "enable", "enabled", "on", "true", "1", "disable", "disabled",
                    "off", "false", "0")
PYOPENGL_PLATFORMS = ("egl", "osmesa", "glx", "x11", "linux", "wayland")


def check_render_environment(environ=os.environ) -> None:
    """``MUJOCO_GL`` and ``PYOPENGL_PLATFORM``, if set, name a rendering backend MuJoCo can use."""
    gl = environ.get("MUJOCO_GL", "").lower().strip()
    platform = environ.get("PYOPENGL_PLATFORM", "").lower().strip()
    if gl and gl not in MUJOCO_GL_VALUES:
        raise ConfigError(f"MUJOCO_GL={environ['MUJOCO_GL']} is not a MuJoCo rendering backend; use egl, osmesa or "
                          "glfw, or unset it and fit picks one that works")
    if platform and (platform not in PYOPENGL_PLATFORMS or (gl in ("egl", "osmesa") and platform != gl)):
        raise ConfigError(f"PYOPENGL_PLATFORM={environ['PYOPENGL_PLATFORM']} does not go with "
                          f"MUJOCO_GL={environ.get('MUJOCO_GL') or '(unset)'}; unset PYOPENGL_PLATFORM, or set both "
                          "to egl (or both to osmesa)")


def tracking_store(uri: str | None, output_dir: str, uri_key: str, dir_key: str) -> tuple[str, str]:
    """The MLflow store a command will use, and where it came from ("key=value", for messages)."""
    from mlr_lightning.training.tracking import USER_TRACKING_URI, resolve_tracking_uri

    resolved = resolve_tracking_uri(uri, output_dir)
    if uri:
        return resolved, f"{uri_key}={resolved}"
    return resolved, f"MLFLOW_TRACKING_URI={resolved}" if USER_TRACKING_URI else f"{dir_key}={output_dir}"


def check_output_dir(output_dir: Path, run_name: str | None = None) -> None:
    """``output_dir`` (and ``output_dir/run_name``) is a directory, or can be created as one."""
    if run_name and (output_dir / run_name).exists() and not (output_dir / run_name).is_dir():
        raise ConfigError(f"run_name={run_name}: {output_dir / run_name} is a file; choose another run_name")
    check_writable_dir(output_dir, f"output_dir={output_dir}")


def check_writable_dir(path: Path, where: str) -> None:
    """``path`` is a writable directory or can be created as one: tried by creating (and removing) a
    temporary directory in its nearest existing ancestor, which also catches read-only file systems.
    ``where`` ("key=value") starts the message."""
    path = path.expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if os.access(p, os.F_OK))
    if not existing.is_dir():
        raise ConfigError(f"{where}: {existing} is a file, not a directory; choose a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".mlr-lightning-check-", dir=existing))
    except OSError as err:
        raise ConfigError(f"{where}: cannot create files in {existing} ({err.strerror}); choose a directory you can "
                          "write to") from None


def cuda_devices() -> int:
    from lightning.fabric.accelerators.cuda import num_cuda_devices  # without initialising CUDA (DDP forks later)

    return num_cuda_devices()


def check_accelerator(accelerator: str, devices: int) -> None:
    gpus = cuda_devices()
    if accelerator in ("gpu", "cuda") and gpus == 0:
        raise ConfigError(f"trainer.accelerator={accelerator} but this machine has no CUDA GPU that PyTorch can use; "
                          "use trainer.accelerator=cpu (or auto)")
    if accelerator in ("gpu", "cuda", "auto") and gpus and devices > gpus:
        raise ConfigError(f"trainer.devices={devices} but this machine has {gpus} CUDA GPU{'s' * (gpus > 1)}; "
                          f"use trainer.devices={gpus} or fewer")
    if accelerator == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise ConfigError("trainer.accelerator=mps but Apple's MPS is not available here; use trainer.accelerator=cpu")


def check_tracking_uri(uri: str, where: str, must_exist: bool = False) -> None:
    """A known MLflow store scheme; a local store's directory writable (with ``must_exist``: the store
    exists); a server or database host that accepts a connection within :data:`CONNECT_TIMEOUT_S`.
    ``where`` ("key=value": where the URI came from) starts the message."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower().split("+")[0]
    if len(scheme) == 1:  # a Windows drive letter: a path
        scheme = ""
    if scheme in LOCAL_SCHEMES:
        path = _local_store_path(uri, scheme)
        if path is None:  # sqlite in memory
            return
        if must_exist and not path.exists():
            raise ConfigError(f"{where}: no MLflow store at {path.absolute()}; give the output_dir your runs were "
                              "written to, or the store they used")
        if path.exists() and scheme == "sqlite" and not (path.is_file() and os.access(path, os.W_OK)):
            raise ConfigError(f"{where}: {path} is not a writable sqlite file")
        if path.is_file() and scheme == "sqlite":  # read-only: a damaged, locked or half-made store
            from mlr_lightning.training.tracking import TrackingStoreError, check_embedded_store

            try:
                check_embedded_store(path)
            except TrackingStoreError as err:
                raise ConfigError(f"{where}: {err}") from None
        check_writable_dir(path.parent if scheme == "sqlite" else path, where)
    elif scheme in SERVER_PORTS or scheme in DATABASE_PORTS:
        if parts.hostname:  # a database reached through a local socket has none
            check_connects(where, parts.hostname, _port(parts) or {**SERVER_PORTS, **DATABASE_PORTS}[scheme])
    elif scheme not in OTHER_SCHEMES:
        raise ConfigError(f"{where}: unknown MLflow store scheme {parts.scheme!r}; {STORE_HELP}")


def _local_store_path(uri: str, scheme: str) -> Path | None:
    if scheme == "sqlite":
        name = uri.split(":///", 1)[1] if ":///" in uri else ""
        return None if name in ("", ":memory:") else Path(name)
    if scheme == "file":
        return Path(urlsplit(uri).path)
    return Path(uri)


def _port(parts) -> int | None:
    try:
        return parts.port
    except ValueError:  # not a number
        return None


def check_connects(where: str, host: str, port: int, fix: str = "start the tracking server or fix the URI") -> None:
    """A TCP connection to ``host:port`` within the timeout; name resolution is bounded too (in a thread).
    ``where`` starts the one-line message, ``fix`` ends it."""
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(err)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT_S + 0.5)
    if outcome and outcome[0] is None:
        return
    reason = (outcome[0].strerror or str(outcome[0])) if outcome else "no answer"
    raise ConfigError(f"{where}: cannot reach {host}:{port} within {CONNECT_TIMEOUT_S:.0f} s ({reason}); {fix}")
