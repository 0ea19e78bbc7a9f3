"""Experiment tracking: ``metrics.csv`` and MLflow on the environment-step axis, and the run record.

Lightning's own step counter counts optimizer steps, and under manual optimization with 3-4
optimizers per agent update that is neither agent updates nor environment steps, so every logger
here records against environment steps, the paper's x-axis.

``metrics.csv`` is the run's history of record: it is never deleted or rewritten in place (a resume
replaces it atomically with the rows it keeps, a header change rewrites it atomically, other saves
append), and a cut last line (power loss) is dropped on reading. MLflow is a mirror of it: a store
that is unreachable or disappears costs bounded retries (seconds), then a warning, and training goes
on; ``python -m mlr_lightning sync <run_dir>`` (and every resume) fills in what MLflow missed.

MLflow needs no server: the default store is an embedded sqlite database at
``<output_dir>/mlflow.db``, created and migrated atomically under a lock before any run uses it.
``tracking.uri`` or ``MLFLOW_TRACKING_URI`` point at a real server instead.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import subprocess
import warnings
from collections.abc import Mapping
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mlr_lightning.config import RESUMABLE_CHANGES, flatten, replace_text
from mlr_lightning.domains import domain_of
from mlr_lightning.run_identity import HASH_TAG, config_hash
from mlr_lightning.training.snapshot import load_run_config

PACKAGE_DIR = Path(__file__).resolve().parent
# The user's MLFLOW_TRACKING_URI, read once at import: mlflow.set_tracking_uri() (which Lightning's
# MLFlowLogger calls) overwrites the environment variable, so reading it later would pick up the
# URI of whatever run came before in this process.
USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")
METRICS_FILE = "metrics.csv"
EVAL_KEY = "eval/return_mean"  # in every evaluation's record
RUN_ID_FILE = "mlflow_run.json"
# MLflow's HTTP client retries 7 times with exponential backoff by default (minutes against a dead
# server); a few seconds is enough to ride out a restart, after which the CSV goes on alone.
BOUNDED_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class TrackingStoreError(RuntimeError):
    """The MLflow store cannot be used, with what to do about it."""


# ----------------------------------------------------------------------------- metrics.csv
def read_metrics(path: Path, through_step: int | None = None) -> list[dict]:
    """Rows of a ``metrics.csv`` (empty cells dropped), up to ``through_step``. A last line without
    its newline was cut by a crash or power loss mid-write: it is dropped."""
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        try:
            step = int(float(row["step"]))
        except (KeyError, TypeError, ValueError):
            continue
        if through_step is None or step <= through_step:
            rows.append({k: v for k, v in row.items() if k is not None and v not in ("", None)})
    return rows


def check_metrics_file(path: Path) -> None:
    """Before a resume rewrites ``metrics.csv`` with the rows it keeps: a file whose header is gone,
    that is empty or holds NUL bytes would lose rows silently; it is refused, naming what to do."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    first = data.split(b"\n", 1)[0]
    problem = ("it is empty" if not data else "it holds NUL bytes" if b"\0" in data
               else "its header line is missing" if b"step" not in [name.strip() for name in first.split(b",")]
               else None)
    if problem:
        raise TrackingStoreError(f"{path} is damaged ({problem}): move it aside (mv {path} {path}.damaged) and resume "
                                 f"with --resume {path.parent}; the resumed run writes a new one, the MLflow run "
                                 "keeps the rows logged so far")


def write_metrics(path: Path, rows: list[dict]) -> None:
    """Replace ``path`` with ``rows`` atomically: a crash or a full disk leaves the old file or the new one."""
    keys = sorted(set().union(*rows)) if rows else ["step"]
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    try:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def append_metrics(path: Path, keys: list[str], rows: list[dict]) -> None:
    """Append ``rows`` whole or not at all: a write refused midway (a full disk) is cut back off."""
    text = io.StringIO(newline="")
    csv.DictWriter(text, fieldnames=keys).writerows(rows)
    data = text.getvalue().encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        start = os.fstat(fd).st_size
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError:
            os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


class MetricsWriter(ExperimentWriter):
    """Lightning's CSV writer, made safe for a run's history: it never deletes an existing file
    (Lightning's removes it when the directory is not empty), and it keeps every row so that a
    header change rewrites the file atomically instead of in place."""

    def __init__(self, log_dir: str, history: list[dict]):
        self.history = history
        super().__init__(log_dir)
        self.metrics_keys = sorted(set().union(*history)) if history else []

    def _check_log_dir_exists(self) -> None:
        pass  # the run directory holds config.yaml and the kept history: nothing to delete

    _rewrite = False  # a write failed: the next save rewrites the whole file
    _warned = False

    def save(self) -> None:
        """Write the pending rows. A full disk never cuts a row: a failed write leaves the file as it
        was, warns once, and the rows wait in memory for the next save."""
        if not self.metrics:
            return
        rows = self.metrics
        new_keys = self._record_new_keys_of(rows)
        path = Path(self.metrics_file_path)
        try:
            if new_keys or self._rewrite or not path.is_file():
                write_metrics(path, self.history + rows)
            else:
                append_metrics(path, self.metrics_keys, rows)
        except OSError as err:
            self._rewrite = True
            if not self._warned:
                self._warned = True
                warnings.warn(f"could not write {path} ({err.strerror or err}); its rows are kept in memory and "
                              "written at the next save: free disk space")
            return
        self._rewrite, self.metrics = False, []
        self.history.extend(rows)

    def _record_new_keys_of(self, rows: list[dict]) -> set[str]:
        new_keys = set().union(*rows) - set(self.metrics_keys)
        self.metrics_keys = sorted(set(self.metrics_keys) | new_keys)
        return new_keys


class EnvStepAxis:
    """Mixin for Lightning loggers: use the logged ``env_steps`` value as the step of each record.

    ``skip_through_step``: records up to this step are dropped. A run resumed from a snapshot
    replays the steps between that snapshot and the interruption; they were logged already. An
    evaluation is never dropped: the snapshot holds which evaluations are done, so one it repeats
    (stopped midway, at the snapshot's own step) was never logged. A record equal to the previous
    one (same step, same values) is dropped too.
    """

    skip_through_step: int = -1
    _last_record: tuple | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if "env_steps" in metrics:
            step = int(metrics["env_steps"])
        if step is not None and step <= self.skip_through_step and EVAL_KEY not in metrics:
            return
        record = (step, sorted((k, float(v)) for k, v in metrics.items()))
        if record == self._last_record:
            return  # the same record again (logs flushed before a snapshot, then by Lightning)
        self._last_record = record
        super().log_metrics(metrics, step)


class EnvStepCSVLogger(EnvStepAxis, CSVLogger):
    """``<run_dir>/metrics.csv`` with ``step`` = environment steps.

    ``keep_through_step``: on resume, the rows up to the snapshot's step are kept and the rows after
    it dropped (they will be logged again); the kept rows are written back atomically *before*
    anything else happens, so a resume that dies during start-up loses nothing.
    """

    def __init__(self, run_dir: Path, keep_through_step: int | None = None):
        super().__init__(run_dir, name="", version="")
        self._history: list[dict] = []
        if keep_through_step is not None and rank_zero_only.rank == 0:
            path = Path(run_dir) / METRICS_FILE
            check_metrics_file(path)
            self._history = read_metrics(path, keep_through_step)
            write_metrics(path, self._history)

    @property
    def experiment(self) -> MetricsWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = MetricsWriter(self.log_dir, self._history)
        return self._experiment


# ----------------------------------------------------------------------------------- MLflow
def default_store(output_dir: str | Path) -> Path:
    return Path(output_dir).resolve() / "mlflow.db"


def resolve_tracking_uri(uri: str | None, output_dir: str | Path) -> str:
    """An explicit URI, else $MLFLOW_TRACKING_URI, else the embedded store under ``output_dir``."""
    return uri or USER_TRACKING_URI or f"sqlite:///{default_store(output_dir)}"


def artifact_location(uri: str) -> str | None:
    """Where an experiment made in the store ``uri`` keeps its artifacts: beside an embedded (sqlite)
    store rather than in ./mlruns of the working directory; a server's own choice otherwise."""
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri() if uri.startswith("sqlite:///") else None


def ensure_embedded_store(path: Path) -> None:
    """Create the sqlite store at ``path`` atomically, under a lock, or check that the existing one
    is complete. MLflow creates its tables by running ~50 schema migrations; interrupted, they leave
    a store that breaks every later run, and two first runs at once race on them."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or by the OS if we die
        if path.exists():
            check_embedded_store(path)
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        store = SqlAlchemyStore(f"sqlite:///{tmp}", (path.parent / "mlartifacts").as_uri())
        store.engine.dispose()
        os.replace(tmp, path)


def check_embedded_store(path: Path) -> None:
    """An existing sqlite store opened read-only: a database, not locked, its schema complete; else
    :class:`TrackingStoreError` naming the file and what to do."""
    import sqlite3

    from mlflow.store.db.utils import _get_latest_schema_revision

    path, head = Path(path), _get_latest_schema_revision()
    try:
        with contextlib.closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=5)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            current = db.execute("SELECT version_num FROM alembic_version").fetchone()[0] \
                if "alembic_version" in tables else None
    except sqlite3.OperationalError as err:
        if "locked" in str(err):
            raise TrackingStoreError(f"the MLflow store {path} is locked by another process ({err}): wait for it to "
                                     "finish, or stop it") from None
        raise _damaged_store(path, err) from None
    except sqlite3.DatabaseError as err:  # not a database, or a malformed (truncated) one
        raise _damaged_store(path, err) from None
    if current != head:
        raise TrackingStoreError(
            f"the MLflow store {path} is incomplete (schema {current or 'none'}, expected {head}): a first "
            f"run was interrupted while creating it. If it holds no runs you need, delete it; otherwise "
            f"migrate it with `mlflow db upgrade sqlite:///{path}`")


def _damaged_store(path: Path, err: Exception) -> TrackingStoreError:
    return TrackingStoreError(f"the MLflow store {path} is damaged ({err}): move it aside (mv {path} {path}.damaged); "
                              "the next run creates a new one, and `python -m mlr_lightning sync RUN_DIR` refills it "
                              "from each run's metrics.csv (or resume with tracking.uri=<another store> or "
                              "tracking.mlflow=false)")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=10)
    except OSError:
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def run_tags(cfg: DictConfig) -> dict[str, str]:
    """The tags ``compare`` selects and groups runs by."""
    agent = domain_of(cfg).agent_name
    return {
        "domain": cfg.domain,
        "task": cfg.env.task,
        "algorithm": f"{agent}_mlr" if cfg.mlr.enabled else agent,
        "mlr": "on" if cfg.mlr.enabled else "off",
        "seed": str(cfg.seed),
        "git_commit": git_commit(),
    }


def yaml_value(value) -> str:
    """A config value as written in YAML: ``true``, ``null``, ``0.0005``, ``[32, 64, 64]``."""
    return OmegaConf.to_yaml({"v": value}).strip().removeprefix("v:").strip()


def config_params(cfg: DictConfig) -> dict[str, str]:
    """The experiment's config as MLflow params: dotted keys and YAML values, so that a filter reads
    like the config (``params."mlr.enabled" = 'true'``). Bookkeeping keys that a resume may change
    are tags (``cfg.<key>``) instead: MLflow params cannot change."""
    flat = flatten(OmegaConf.to_container(cfg, resolve=True))
    return {k: yaml_value(v)[:500] for k, v in flat.items() if k not in RESUMABLE_CHANGES}


class EnvStepMLFlowLogger(EnvStepAxis, MLFlowLogger):
    """MLflow on the env-step axis that never stops training: the first failed call (a server down,
    a network gone) warns once and turns MLflow off for the rest of the run; ``metrics.csv`` goes on."""

    def __init__(self, cfg: DictConfig, run_dir: Path, **kwargs):
        super().__init__(**kwargs)
        self.cfg, self.run_dir, self.failed = cfg, Path(run_dir), False

    def call(self, what: str, fn, *args, **kwargs):
        """Run one MLflow call; on failure warn (once) and stop using MLflow."""
        if self.failed:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # MlflowException, requests' ConnectionError, sqlite errors, ...
            self.failed = True
            warnings.warn(f"MLflow stopped working ({what}: {type(err).__name__}: {str(err)[:200]}); training goes "
                          f"on and {self.run_dir / METRICS_FILE} keeps every metric. Fill MLflow in later with "
                          f"`python -m mlr_lightning sync {self.run_dir}` (a resume does it too).")
            return None

    @rank_zero_only
    def log_hyperparams(self, params) -> None:  # the config, not Lightning's hparams dict
        self.call("logging the config", log_config, self.experiment, self.run_id, self.cfg)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.call("logging metrics", super().log_metrics, metrics, step)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        self.call("closing the run", super().finalize, status)


def log_config(client, run_id: str, cfg: DictConfig) -> None:
    """Params from :func:`config_params`, bookkeeping keys as tags. On a resume with an explicitly
    allowed change (``--allow-change``) the param keeps its first value and a tag records the change."""
    from mlflow.entities import Param, RunTag

    logged = client.get_run(run_id).data.params
    params, tags = [], []
    for key, value in config_params(cfg).items():
        if key not in logged:
            params.append(Param(key, value))
        elif logged[key] != value:
            tags.append(RunTag(f"changed_on_resume.{key}", f"{logged[key]} -> {value}"))
    flat = flatten(OmegaConf.to_container(cfg, resolve=True))
    tags += [RunTag(f"cfg.{key}", yaml_value(flat[key])) for key in RESUMABLE_CHANGES if key in flat]
    tags.append(RunTag(HASH_TAG, config_hash(cfg)))  # the sweep and compare tell configs apart by it
    for start in range(0, max(len(params), len(tags)), 100):  # MLflow takes 100 params per batch
        client.log_batch(run_id, params=params[start:start + 100], tags=tags[start:start + 100])


def last_logged_step(client, run_id: str) -> int:
    """The largest step of any metric already in the MLflow run."""
    keys = client.get_run(run_id).data.metrics
    return max((m.step for key in keys for m in client.get_metric_history(run_id, key)), default=-1)


def mlflow_logger(loggers: list[Logger]) -> EnvStepMLFlowLogger | None:
    return next((lg for lg in loggers if isinstance(lg, EnvStepMLFlowLogger)), None)


# ------------------------------------------------------------------ the run record, resume, sync
def read_run_record(run_dir: Path) -> dict:
    """``<run_dir>/mlflow_run.json``: the MLflow run id and where its store is. An embedded store is
    recorded relative to the run (``<run_dir>/../mlflow.db``), so a moved or copied runs directory
    resumes into its own store."""
    path = Path(run_dir) / RUN_ID_FILE
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except ValueError as err:
        warnings.warn(f"{path} is unreadable ({err}); ignoring it")
        return {}
    if record.get("store") == "embedded":
        record["tracking_uri"] = f"sqlite:///{default_store(Path(run_dir).parent)}"
    return record


def write_run_record(run_dir: Path, run_id: str, uri: str, status: Mapping[str, str] | None = None) -> None:
    """``status``: the run's recorded outcome (see :func:`record_status`), if it has one."""
    embedded = uri == f"sqlite:///{default_store(Path(run_dir).parent)}"
    record = {"run_id": run_id, "store": "embedded"} if embedded else {"run_id": run_id, "tracking_uri": uri}
    record |= status or {}
    replace_text(Path(run_dir) / RUN_ID_FILE, json.dumps(record))


def make_loggers(cfg: DictConfig, run_dir: Path, resume_step: int | None = None) -> list[Logger]:
    """CSV and MLflow loggers. With ``resume_step`` (the snapshot's env step) they continue the
    run's ``metrics.csv`` and its MLflow run; MLflow is first filled in from the CSV up to there."""
    loggers: list[Logger] = [EnvStepCSVLogger(run_dir, keep_through_step=resume_step)]
    if not cfg.tracking.mlflow:
        return loggers
    for key, value in BOUNDED_RETRIES.items():
        os.environ.setdefault(key, value)
    saved = read_run_record(run_dir)
    # A tracking.uri in the config wins over the record's store: a resume may name the store moved to.
    uri = cfg.tracking.uri or saved.get("tracking_uri") or resolve_tracking_uri(None, cfg.output_dir)
    embedded = uri.startswith("sqlite:///")
    if rank_zero_only.rank == 0:
        ensure_store(uri)
    run_id = saved.get("run_id")
    if resume_step is not None and run_id is None and rank_zero_only.rank == 0:
        warnings.warn(f"{run_dir / RUN_ID_FILE} is missing: continuing in the MLflow run named {run_dir.name!r} "
                      "if there is one, else in a new run")
        run_id = find_run_by_name(uri, cfg.tracking.experiment, run_dir.name)
    superseded = None
    if resume_step is not None and run_id is not None and rank_zero_only.rank == 0:
        run_id, superseded = resumable_run(uri, run_id, run_dir, resume_step, forgets=embedded)
    logger = EnvStepMLFlowLogger(cfg, run_dir, experiment_name=cfg.tracking.experiment, run_name=run_dir.name,
                                 tracking_uri=uri, tags=run_tags(cfg), artifact_location=artifact_location(uri),
                                 run_id=run_id)
    loggers.append(logger)
    if rank_zero_only.rank != 0:
        return loggers
    if logger.call("starting the run", lambda: logger.run_id) is None:
        return loggers
    write_run_record(run_dir, logger.run_id, uri)
    if resume_step is not None:
        client = logger.experiment
        if superseded is not None and superseded != logger.run_id:
            logger.call("linking the runs", link_runs, client, superseded, logger.run_id, resume_step)
        logger.call("reopening the run", client.update_run, logger.run_id, status="RUNNING")
        if embedded:
            logger.call("dropping what the resume replays", forget_after, uri, logger.run_id, resume_step)
        logger.call("filling in MLflow", sync_metrics, client, logger.run_id, run_dir / METRICS_FILE)
        logger.skip_through_step = resume_step
    return loggers


def forget_after(uri: str, run_id: str, step: int) -> None:
    """Remove the run's metric points past ``step`` from an embedded store: a resume replays those
    steps (identically after an interruption, differently after a divergence recovery from an older
    snapshot or a changed setting) and logs them again, so MLflow holds what ``metrics.csv`` holds.

    Plain SQL on MLflow's own tables, because MLflow has no API that deletes metric points;
    ``latest_metrics`` (what ``search_runs`` shows) is recomputed the way MLflow orders points
    (step, then timestamp, then value)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(uri.removeprefix("sqlite:///"), timeout=30)) as db, db:
        db.execute("DELETE FROM metrics WHERE run_uuid = ? AND step > ?", (run_id, step))
        db.execute("DELETE FROM latest_metrics WHERE run_uuid = ?", (run_id,))
        db.execute("""INSERT OR REPLACE INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid)
            SELECT key, value, timestamp, step, is_nan, run_uuid FROM metrics AS m WHERE run_uuid = ? AND NOT EXISTS (
              SELECT 1 FROM metrics AS n WHERE n.run_uuid = m.run_uuid AND n.key = m.key AND (n.step > m.step
                OR (n.step = m.step AND (n.timestamp > m.timestamp OR (n.timestamp = m.timestamp AND n.value > m.value)))))
            """, (run_id,))


def resumable_run(uri: str, run_id: str, run_dir: Path, step: int, forgets: bool) -> tuple[str | None, str | None]:
    """The MLflow run a resume from env step ``step`` continues, and the run it supersedes: ``(None,
    None)`` for a new run when the store lacks the recorded one (a run directory moved to another
    output_dir); ``(None, run_id)`` when a store that cannot forget points (a server, see
    :func:`forget_after`; ``forgets`` False) holds points past ``step``, which the resume replays."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        client = MlflowClient(uri)
        client.get_run(run_id)
        if forgets or last_logged_step(client, run_id) <= step:
            return run_id, None
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            return run_id, None  # MLflow down: make_loggers' own calls warn about it
        warnings.warn(f"{run_dir / RUN_ID_FILE} names MLflow run {run_id}, which {uri} does not hold (a run "
                      "directory moved from another output_dir, or another tracking.uri?): continuing in a new MLflow "
                      "run there, filled in from metrics.csv")
        return None, None
    except Exception:  # noqa: BLE001  (MLflow down: make_loggers' own calls warn about it)
        return run_id, None
    return None, run_id


def link_runs(client, old_run_id: str, new_run_id: str, step: int) -> None:
    client.set_tag(new_run_id, "resumed_from_run", old_run_id)
    client.set_tag(old_run_id, "continued_in_run", new_run_id)
    client.set_tag(old_run_id, "status_reason", f"resumed from env step {step} in run {new_run_id}; its points past "
                                                "that step belong to an abandoned trajectory")
    client.set_terminated(old_run_id, "KILLED")


def find_run_by_name(uri: str, experiment_name: str, name: str) -> str | None:
    """The newest run called ``name`` in the experiment (None if there is none, or MLflow is down)."""
    from mlflow import MlflowClient

    try:
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(experiment_name)
    except Exception:  # noqa: BLE001  (then make_loggers' own calls warn about MLflow)
        return None
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{name}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def sync_metrics(client, run_id: str, metrics_csv: Path) -> int:
    """Log the rows of ``metrics_csv`` past the run's last logged step into MLflow; returns the
    last step MLflow now holds."""
    from mlflow.entities import Metric

    last = last_logged_step(client, run_id)
    rows = [r for r in read_metrics(metrics_csv) if int(float(r["step"])) > last]
    metrics = [Metric(key, float(value), 0, int(float(row["step"])))
               for row in rows for key, value in row.items() if key not in ("step", "epoch")]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])
    return max([last] + [int(float(r["step"])) for r in rows])


def holds_run(client, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def create_run_for(client, uri: str, run_dir: Path) -> str:
    """A new MLflow run for ``run_dir``, as ``fit`` would have made it: its name, the experiment, tags
    and params of its ``config.yaml``. Its metrics come after (:func:`sync_metrics`)."""
    cfg = load_run_config(run_dir)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        experiment_id = client.create_experiment(cfg.tracking.experiment, artifact_location=artifact_location(uri))
    else:
        experiment_id = experiment.experiment_id
    tags = run_tags(cfg) | {"git_commit": "unknown", "recorded_by": f"sync of {Path(run_dir).resolve()}"}
    run_id = client.create_run(experiment_id, run_name=Path(run_dir).name, tags=tags).info.run_id
    log_config(client, run_id, cfg)
    return run_id


def ensure_store(uri: str) -> None:
    """An embedded (sqlite) store at ``uri`` created or checked (:func:`ensure_embedded_store`); a
    server's store is the server's."""
    if uri.startswith("sqlite:///"):
        ensure_embedded_store(Path(uri.removeprefix("sqlite:///")))


def ensure_store_for(cfg: DictConfig) -> None:
    """Before a new run exists: the store this config would use, created or checked."""
    if cfg.tracking.mlflow:
        ensure_store(resolve_tracking_uri(cfg.tracking.uri, cfg.output_dir))


def sync_run(run_dir: Path, uri: str | None = None, in_use: bool = False) -> tuple[str, int, str | None]:
    """``python -m mlr_lightning sync``: fill the run's MLflow run in from its ``metrics.csv`` and,
    unless a process still trains in it (``in_use``), give it the status its run directory recorded
    (KILLED when none was: the process died without a word, a SIGKILL or a power loss). Returns the
    run id, the last step MLflow holds and the status set (None: left as it was)."""
    from mlflow import MlflowClient

    run_dir = Path(run_dir)
    record = read_run_record(run_dir)
    uri = uri or record.get("tracking_uri")
    if uri is None:
        raise TrackingStoreError(f"{run_dir} has no {RUN_ID_FILE}: it was never recorded in MLflow; name the store "
                                 "to record it in with --tracking-uri")
    ensure_store(uri)
    client = MlflowClient(uri)
    run_id = record.get("run_id")
    if run_id is None or not holds_run(client, run_id):
        # A store moved aside or replaced, or a run trained without MLflow: the run is recorded anew.
        run_id = create_run_for(client, uri, run_dir)
        write_run_record(run_dir, run_id, uri, status={k: record[k] for k in ("status", "status_reason") if k in record})
    last = sync_metrics(client, run_id, run_dir / METRICS_FILE)
    status = None if in_use else record.get("status")
    if not in_use and status is None and client.get_run(run_id).info.status == "RUNNING":
        status = "KILLED"
        record["status_reason"] = ("the training process ended without recording an outcome (killed, or the machine "
                                   f"went down); continue it with --resume {run_dir}")
    if status is not None:
        client.set_tag(run_id, "status_reason", record.get("status_reason", "")[:5000])
        client.set_terminated(run_id, status)
    return run_id, last, status


def record_status(run_dir: Path, status: str, reason: str = "") -> None:
    """Write the run's outcome into its run record, where ``sync`` finds it when MLflow was down."""
    path = Path(run_dir) / RUN_ID_FILE
    try:
        record = json.loads(path.read_text())
        record |= {"status": status, "status_reason": reason}
        replace_text(path, json.dumps(record))
    except (OSError, ValueError):  # no record (MLflow off or never reached) or an unwritable disk
        pass


def mark_run(run_dir: Path, status: str, reason: str) -> None:
    """Set the recorded MLflow run's status with the reason as a tag (best effort: MLflow may be
    down; the run record keeps the status for ``sync``)."""
    from mlflow import MlflowClient

    record_status(run_dir, status, reason)
    record = read_run_record(run_dir)
    if "run_id" not in record:
        return
    try:
        client = MlflowClient(record["tracking_uri"])
        client.set_tag(record["run_id"], "status_reason", reason[:5000])
        client.set_terminated(record["run_id"], status)
    except Exception as err:  # noqa: BLE001  (the run's outcome must not depend on MLflow)
        warnings.warn(f"could not mark the MLflow run {status} ({type(err).__name__}: {err})")
