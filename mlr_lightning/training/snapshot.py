"""The snapshot format, in one place: what a full-state checkpoint holds, how it is written,
verified and found, and the resume policy built on it.

::

    <run_dir>/checkpoints/
      update-00012000/          one complete snapshot
        model.ckpt              Lightning checkpoint: networks, targets, optimizers, LR schedules,
                                callbacks (evaluation schedule and history), loop progress
        stream-rank{r}.pt       rank r's ExperienceStream.state_dict(): counters, collector, the
                                running episode inside the simulator, RNG states
        replay-rank{r}.pt       rank r's Replay.state_dict(): rows, frames, write cursor, priorities
        MANIFEST.json           written last: every file's size, sha256 of the small files, and
                                the run_uid of the run that wrote it
      last.ckpt -> update-00012000/model.ckpt
    <run_dir>/run_uid           a random id, made with the run's directory

``model.ckpt`` holds what Lightning saves of the agent and of the callbacks' ``state_dict`` (the
evaluation schedule and history, with the evaluation environment's state). Every rank writes its
own stream and replay files, so a resume needs the same number of ranks.

A snapshot is written under a temporary name and renamed when its manifest is on disk, so a crash,
a SIGKILL or a full disk mid-write never replaces a good snapshot: the previous one stays and
``last.ckpt`` keeps pointing at it. The ``keep`` newest snapshots are kept.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from mlr_lightning.config import ConfigError, config_differences, replace_text, to_yaml, write_config
from mlr_lightning.domains import Domain

CHECKPOINTS = "checkpoints"  # <run_dir>/checkpoints, and the MLflow artifact folder of the final weights
MODEL_FILE = "model.ckpt"
MANIFEST = "MANIFEST.json"
RUN_UID = "run_uid"  # <run_dir>/run_uid; every snapshot's manifest records it, so a resume knows whose it is
LAST = "last.ckpt"
LAST_ARTIFACT = f"{CHECKPOINTS}/{LAST}"  # the final weights' MLflow artifact path
SNAPSHOT = re.compile(r"^update-(\d+)$")
HASHED_MAX_BYTES = 256 * 2**20  # files up to this size are hashed; larger ones (replay) are size-checked


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used or written, with what to do about it."""


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def model_checkpoint(path: str | Path) -> Path | None:
    """A run directory (its newest published weights) or a checkpoint file -> the checkpoint file; None if
    ``path`` is neither. For reading a trained agent, not for resuming (that is :func:`resolve_snapshot`)."""
    path = Path(path)
    if path.is_file():
        return path
    last = checkpoints_dir(path) / LAST
    return last if path.is_dir() and last.is_file() else None


def has_snapshot(run_dir: Path) -> bool:
    """Whether the run directory holds a published snapshot (complete or not, unverified)."""
    return bool(snapshots(checkpoints_dir(run_dir)))


def snapshot_name(num_updates: int) -> str:
    return f"update-{num_updates:08d}"


def write_snapshot(checkpoints: Path, name: str, write: Callable[[Path], None], keep: int, min_free_bytes: int = 0,
                   is_writer: bool = True, barrier: Callable[[], None] = lambda: None) -> Path:
    """Run ``write(tmp_dir)`` (on every rank), then publish the directory as ``checkpoints/name``.

    On a write failure (a full disk, say) the temporary directory is removed and
    :class:`CheckpointError` says which good snapshot remains. ``min_free_bytes`` is checked first:
    a snapshot that cannot fit is refused before anything is written (the write itself would also
    fail cleanly: every file is written with ordinary writes, never through a memory map).
    """
    checkpoints = Path(checkpoints)
    final, tmp = checkpoints / name, checkpoints / f".{name}.tmp"
    try:
        checkpoints.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(checkpoints).free
        if free < min_free_bytes:
            raise OSError(errno.ENOSPC, f"{free / 2**20:.0f} MiB free, the snapshot needs ~{min_free_bytes / 2**20:.0f} MiB")
        if is_writer:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        write(tmp)
        barrier()
        if is_writer:
            _write_manifest(tmp, run_uid(checkpoints.parent))
            _publish(tmp, final)
            _point_last_at(checkpoints, final)
            _prune(checkpoints, keep)
    except (OSError, RuntimeError) as err:  # torch.save reports failed writes as RuntimeError
        if is_writer:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_snapshot(checkpoints, verify=False)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(f"writing checkpoint {final} failed ({err}); {kept}") from err
    return final


def save_torch(obj, path: Path) -> None:
    """``torch.save`` through memory: a failed write then raises the OS's own error (ENOSPC,
    EFBIG) instead of torch's opaque one."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with open(path, "wb") as handle:
        handle.write(buffer.getbuffer())


def _write_manifest(directory: Path, uid: str | None) -> None:
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        entry = {"bytes": path.stat().st_size}
        if entry["bytes"] <= HASHED_MAX_BYTES:
            entry["sha256"] = _sha256(path)
        with open(path, "rb") as handle:  # on disk before the rename makes the snapshot visible
            os.fsync(handle.fileno())
        files[str(path.relative_to(directory))] = entry
    manifest = directory / MANIFEST
    manifest.write_text(json.dumps({"files": files, RUN_UID: uid}, indent=1))
    with open(manifest, "rb") as handle:
        os.fsync(handle.fileno())


def _publish(tmp: Path, final: Path) -> None:
    if final.exists():  # the same update saved twice (e.g. periodic, then at the end): newest wins
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


def _point_last_at(checkpoints: Path, snapshot: Path) -> None:
    link, tmp = checkpoints / LAST, checkpoints / f".{LAST}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path(snapshot.name) / MODEL_FILE)
    os.replace(tmp, link)  # atomic: last.ckpt always names a complete snapshot


def snapshots(checkpoints: Path) -> list[Path]:
    """Published snapshots, newest first."""
    if not Path(checkpoints).is_dir():
        return []
    found = [p for p in Path(checkpoints).iterdir() if p.is_dir() and SNAPSHOT.match(p.name)]
    return sorted(found, key=lambda p: int(SNAPSHOT.match(p.name).group(1)), reverse=True)


def _prune(checkpoints: Path, keep: int) -> None:
    for old in snapshots(checkpoints)[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def ensure_run_uid(run_dir: Path) -> str:
    """The run's id, made now for a new run directory (or one made before run ids existed)."""
    if (uid := run_uid(run_dir)) is not None:
        return uid
    uid = uuid.uuid4().hex
    replace_text(Path(run_dir) / RUN_UID, uid + "\n")
    return uid


def run_uid(run_dir: Path) -> str | None:
    try:
        return (Path(run_dir) / RUN_UID).read_text().strip() or None
    except OSError:
        return None


def check_snapshot_belongs(snapshot: Path, run_name: str | None) -> None:
    """A resume continues the run that wrote the snapshot: refuse a snapshot copied in from another run
    (its manifest's run_uid is not its run directory's) and ``--resume`` of another run than
    ``run_name`` names. Snapshots written before run ids existed carry none and are accepted."""
    run_dir = run_dir_of(snapshot)
    if run_name and Path(run_dir).name != run_name:
        raise CheckpointError(f"--resume {snapshot}: that snapshot belongs to run {Path(run_dir).name}, not to "
                              f"run_name={run_name!r}; drop run_name to continue {Path(run_dir).name}, or drop "
                              f"--resume to start {run_name!r}")
    try:
        written_by = json.loads((Path(snapshot) / MANIFEST).read_text()).get(RUN_UID)
    except (OSError, ValueError, AttributeError):
        return  # verify_snapshot names a damaged manifest
    mine = run_uid(run_dir)
    if written_by and mine and written_by != mine:
        raise CheckpointError(f"checkpoint {snapshot} was written by another run (run_uid {written_by}, not "
                              f"{run_dir}'s {mine}): it was copied in from elsewhere; move it out of "
                              f"{Path(snapshot).parent} and resume again, or resume the run that wrote it")


def verify_snapshot(snapshot: Path) -> None:
    """Raise :class:`CheckpointError` unless every file matches the manifest."""
    snapshot = Path(snapshot)
    manifest = snapshot / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"checkpoint {snapshot} is incomplete: it has no {MANIFEST}")
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint {snapshot} is corrupted: unreadable {MANIFEST} ({err})") from None
    for name, entry in files.items():
        path = snapshot / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {snapshot} is corrupted: {name} is missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(f"checkpoint {snapshot} is corrupted: {name} has {size} bytes, "
                                  f"{entry['bytes']} were written (truncated?)")
        if "sha256" in entry and _sha256(path) != entry["sha256"]:
            raise CheckpointError(f"checkpoint {snapshot} is corrupted: {name} does not match its checksum")


def latest_snapshot(checkpoints: Path, verify: bool = True) -> Path | None:
    """The newest snapshot that passes :func:`verify_snapshot`; corrupted newer ones are reported."""
    for snapshot in snapshots(checkpoints):
        if not verify:
            return snapshot
        try:
            verify_snapshot(snapshot)
        except CheckpointError as err:
            warnings.warn(f"{err}; falling back to an older checkpoint")
            continue
        return snapshot
    return None


def resolve_snapshot(path: str | Path) -> Path:
    """A run directory, its ``checkpoints/`` directory, a snapshot or a ``model.ckpt``/``last.ckpt``
    -> the verified snapshot directory to resume from."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"--resume {path}: no such file or directory")
    if path.is_file() or path.name == LAST:
        snapshot = path.resolve().parent
    elif SNAPSHOT.match(path.name):
        snapshot = path
    else:
        checkpoints = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        snapshot = latest_snapshot(checkpoints)
        if snapshot is None:
            raise CheckpointError(f"--resume {path}: no complete checkpoint in {checkpoints}")
        return snapshot
    try:
        verify_snapshot(snapshot)
    except CheckpointError as err:
        older = [s for s in snapshots(snapshot.parent) if s != snapshot]
        hint = f"; the previous good checkpoint may be {older[0]} (--resume {older[0]})" if older else ""
        raise CheckpointError(f"{err}{hint}") from None
    return snapshot


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- per-rank state
def stream_file(snapshot: Path, rank: int) -> Path:
    return Path(snapshot) / f"stream-rank{rank}.pt"


def replay_file(snapshot: Path, rank: int) -> Path:
    return Path(snapshot) / f"replay-rank{rank}.pt"


def save_rank_state(directory: Path, rank: int, stream) -> None:
    """This rank's stream state and replay contents (an ``ExperienceStream`` and its ``Replay``).

    Plain file writes throughout, so that a full disk raises (ENOSPC) rather than killing the
    process with SIGBUS as a write through a memory map would.
    """
    save_torch(stream.state_dict(), stream_file(directory, rank))
    with open(replay_file(directory, rank), "wb") as handle:  # streamed: a replay is GBs, no copy in memory
        torch.save(stream.replay.state_dict(), handle)


def load_rank_state(snapshot: Path, rank: int, stream) -> None:
    path = stream_file(snapshot, rank)
    if not path.is_file():
        raise CheckpointError(f"{snapshot} holds no state for rank {rank}: resume with the number of "
                              "ranks (trainer.devices x trainer.num_nodes) that wrote it")
    stream.load_state_dict(torch.load(path, weights_only=False))  # our own files
    stream.replay.load_state_dict(torch.load(replay_file(snapshot, rank), weights_only=False))


def snapshot_agent_steps(snapshot: Path) -> int:
    """Agent steps collected when the snapshot was taken (rank 0's counter)."""
    return torch.load(stream_file(snapshot, 0), weights_only=False)["counters"]["agent_steps"]


def latest_run_agent_steps(run_dir: Path) -> int | None:
    """Agent steps of the run directory's newest snapshot (unverified); None without one."""
    snapshot = latest_snapshot(checkpoints_dir(run_dir), verify=False)
    return None if snapshot is None else int(snapshot_agent_steps(snapshot))


# ----------------------------------------------------------------------------- resume policy
def find_resumable(cfg: DictConfig, resume: str) -> Path | None:
    """``--resume PATH`` -> that snapshot. ``--resume auto`` -> the newest snapshot of this config's
    run: ``output_dir/run_name`` when run_name is set, else the newest run directory whose
    config.yaml is this config; ``None`` (a fresh start) when there is none yet."""
    if resume != "auto":
        return resolve_snapshot(resume)
    output = Path(cfg.output_dir).resolve()
    candidates = [output / cfg.run_name] if cfg.run_name else runs_of_config(cfg)
    for run_dir in candidates:
        snapshot = latest_snapshot(run_dir / "checkpoints")
        if snapshot is not None:
            return snapshot
    return None


def load_run_config(run_dir: Path) -> DictConfig:
    """The run's ``config.yaml``; a missing or damaged one is a :class:`ConfigError` that says how to
    put it back: the run's config file is the one it was started with (the MLflow run's params hold it too)."""
    path = Path(run_dir) / "config.yaml"
    try:
        saved = OmegaConf.load(path)
        if not isinstance(saved, DictConfig) or "env" not in saved:
            raise ValueError("it holds no experiment config")
        return saved
    except Exception as err:  # noqa: BLE001  (missing, truncated, garbage, not UTF-8: all mean the same)
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise ConfigError(f"{path} is missing or damaged ({reason}); write it back from the config the run was "
                          f"started with: python -m mlr_lightning fit --config <that file> [its overrides] "
                          f"output_dir={Path(run_dir).parent} --print-config > {path}, then resume with "
                          f"--resume {run_dir}") from None


def runs_of_config(cfg: DictConfig) -> list[Path]:
    """Run directories under ``output_dir`` whose ``config.yaml`` is this config, newest first."""
    mine = to_yaml(cfg).encode()
    return sorted((p.parent for p in Path(cfg.output_dir).resolve().glob("*/config.yaml") if _read_bytes(p) == mine),
                  key=lambda p: p.stat().st_mtime, reverse=True)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:  # unreadable: not this config's run
        return None


def run_dir_of(snapshot: Path) -> Path:
    return Path(snapshot).parent.parent


def accept_resumed_config(cfg: DictConfig, run_dir: Path, domain: Domain, allow_change: Sequence[str] = ()) -> None:
    """A resumed run must be the same experiment: only bookkeeping keys may change, and optimiser keys
    (the domain's ``optimizer_keys``) the user names (``--allow-change``). An allowed change is written
    into the run's config.yaml."""
    unknown = [key for key in allow_change if key not in domain.optimizer_keys]
    if unknown:
        raise ConfigError(f"--allow-change {unknown[0]}: only optimiser settings may change on resume: "
                          f"{', '.join(domain.optimizer_keys)}")
    saved = load_run_config(run_dir)
    changed = config_differences(saved, cfg, domain.schema, allowed=allow_change)
    if changed:
        raise ConfigError(f"--resume continues {run_dir}, whose config differs in: {'; '.join(changed)}. "
                          f"Resume with --config {run_dir / 'config.yaml'}, or start a new run"
                          + (" (optimiser settings may change with --allow-change KEY)" if not allow_change else ""))
    if to_yaml(saved) != to_yaml(cfg):  # allowed changes only: the run's config is now this one
        write_config(cfg, run_dir / "config.yaml")
