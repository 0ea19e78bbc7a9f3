"""The run directory: one run's files, one process writing them, and what becomes of an attempt
that stopped before its first complete snapshot.

A run directory is locked by the process that trains in it (``fcntl.flock`` on ``.lock``, which the
OS releases when that process dies, however it dies), so a second ``fit`` of the same run, or a
second new run of the same ``run_name``, is refused instead of garbling its history.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from mlr_lightning.config import write_config
from mlr_lightning.training.snapshot import checkpoints_dir, latest_snapshot, runs_of_config
from mlr_lightning.training.tracking import mark_run

LOCK_FILE = ".lock"
PREVIOUS_ATTEMPTS = "previous-attempts"
ERROR_LOG = "error.log"  # the traceback of every attempt that failed, oldest first


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked, with what to do about it."""


class RunLock:
    """An exclusive lock on a run directory for this process's lifetime; the holder's PID is in the file."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        try:
            self.handle = open(self.path, "a+")
        except OSError as err:  # a read-only copy, say
            raise RunDirError(f"cannot write in {run_dir} ({err.strerror}): a run directory must be writable; copy it "
                              "to a writable output_dir and resume the copy") from None
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "unknown"
            self.handle.close()
            raise RunDirError(f"{run_dir} is in use by process {holder} (another fit of this run): wait for it to "
                              f"finish, or stop it (kill {holder}) and resume") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()

    def release(self) -> None:
        if not self.handle.closed:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()


def in_use(run_dir: Path) -> bool:
    """Whether a process trains in ``run_dir`` now (holds its lock)."""
    path = Path(run_dir) / LOCK_FILE
    if not path.exists():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def log_error(run_dir: Path, err: BaseException) -> Path | None:
    """Append the traceback of ``err`` to the run's :data:`ERROR_LOG` (a batch job's own output may be
    gone by the time someone looks); returns its path, or None where it cannot be written."""
    path = Path(run_dir) / ERROR_LOG
    try:
        with open(path, "a") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}, process {os.getpid()}\n")
            log.write("".join(traceback.format_exception(err)))
    except OSError:  # a full or read-only disk: the traceback still reaches the terminal
        return None
    return path


def lock_and_check(run_dir: Path, check: Callable[[], None]) -> RunLock:
    """Lock ``run_dir``, then run ``check`` (which may refuse the run); the lock is released if it does."""
    lock = RunLock(run_dir)
    try:
        check()
    except BaseException:
        lock.release()
        raise
    return lock


def default_run_name(cfg: DictConfig) -> str:
    return "-".join([cfg.env.task, "mlr" if cfg.mlr.enabled else "baseline", f"s{cfg.seed}",
                     time.strftime("%Y%m%d-%H%M%S")])


def new_run_dir(cfg: DictConfig, restart: bool) -> tuple[Path, RunLock]:
    """A locked directory for a new run, holding its ``config.yaml``.

    With ``run_name`` the directory may exist already; without it, ``restart`` reuses this config's
    newest directory when no process holds it. Holding a complete snapshot, it is refused (the
    run goes on with ``--resume``). Holding only an attempt that stopped before its first complete
    snapshot, it is restarted from scratch when ``restart`` (``--resume auto``): that attempt's files
    move to ``previous-attempts/<n>/`` and its MLflow run is marked FAILED with the reason.
    """
    output = Path(cfg.output_dir).resolve()
    if cfg.run_name:
        run_dir = output / cfg.run_name
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_and_check(run_dir, lambda: _clear_for_new_run(cfg, run_dir, restart))
    elif restart and (earlier := _earlier_attempt(cfg)) is not None:  # a requeued --resume auto: the same directory
        run_dir = earlier
        lock = lock_and_check(run_dir, lambda: _clear_for_new_run(cfg, run_dir, restart))
    else:  # never mix two runs started in the same second
        name, suffix = default_run_name(cfg), 1
        while True:
            run_dir = output / (name if suffix == 1 else f"{name}-{suffix}")
            try:
                run_dir.mkdir(parents=True)
                break
            except FileExistsError:
                suffix += 1
        lock = RunLock(run_dir)
    write_config(cfg, run_dir / "config.yaml")
    return run_dir, lock


def _earlier_attempt(cfg: DictConfig) -> Path | None:
    """Without ``run_name``: the newest directory of this config that no process holds (an attempt
    that stopped before its first complete snapshot, since ``--resume auto`` found no snapshot)."""
    return next((run_dir for run_dir in runs_of_config(cfg) if not in_use(run_dir)), None)


def _clear_for_new_run(cfg: DictConfig, run_dir: Path, restart: bool) -> None:
    leftovers = [p for p in run_dir.iterdir() if p.name not in (LOCK_FILE, PREVIOUS_ATTEMPTS)]
    if not leftovers:
        return
    if latest_snapshot(checkpoints_dir(run_dir)) is not None:
        raise RunDirError(f"run_name={cfg.run_name!r}: {run_dir} already holds a run; continue it with "
                          "--resume auto, or choose another run_name")
    attempts = run_dir / PREVIOUS_ATTEMPTS
    if not restart:
        raise RunDirError(f"{run_dir} holds an attempt that stopped before its first complete snapshot: rerun "
                          f"with --resume auto to restart it from scratch (its files are kept in {attempts}/), "
                          "or choose another run_name")
    mark_run(run_dir, "FAILED", "restarted from scratch: the attempt stopped before its first complete snapshot")
    move_to_previous_attempts(run_dir)


def move_to_previous_attempts(run_dir: Path) -> Path | None:
    """Moves the run directory's files (not its lock or earlier attempts) to ``previous-attempts/<n>/``,
    so a fresh start in the same directory keeps them; returns that folder (None if nothing to move)."""
    run_dir = Path(run_dir)
    leftovers = [p for p in run_dir.iterdir() if p.name not in (LOCK_FILE, PREVIOUS_ATTEMPTS)]
    if not leftovers:
        return None
    attempts = run_dir / PREVIOUS_ATTEMPTS
    target = attempts / str((len(list(attempts.iterdir())) if attempts.is_dir() else 0) + 1)
    target.mkdir(parents=True)
    for path in leftovers:
        shutil.move(str(path), target / path.name)
    return target
