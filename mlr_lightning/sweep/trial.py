"""A sweep trial on Ray Tune: an actor that runs one ``fit`` process, and the driver's callback.

Module level on purpose: Ray workers import these classes by name instead of unpickling them.

* :class:`FitTrial` starts ``python -m mlr_lightning fit ... --resume auto`` and polls it. Exit 0:
  finished. Any other exit (a crash, SIGKILL, a preemption's SIGTERM after its snapshot): it raises,
  and Tune retries the trial; the new process resumes from the last snapshot, in the same run
  directory and MLflow run.
* When Tune stops a trial (Ctrl-C on the driver), :meth:`FitTrial.cleanup` sends the process SIGTERM
  and waits: ``fit`` finishes its update, saves a snapshot and exits 143.
* The process also gets SIGTERM if its actor dies (``PR_SET_PDEATHSIG``), and holds a lock on the
  trial for as long as it lives, so a retry waits for the previous process to save before resuming.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ray import tune

from mlr_lightning.sweep.mlflow_store import mark_failed
from mlr_lightning.sweep.progress import INPUT_ERROR_PREFIX, ProgressTable, read_progress

POLL_S = 2.0  # how often the actor looks at its process; Tune can stop an actor only between polls
STOP_TIMEOUT_S = 600.0  # how long a stopped trial may take to save its snapshot
INTERRUPTED_EXIT_CODES = (128 + signal.SIGTERM, 128 + signal.SIGINT)
INPUT_ERROR_EXIT_CODE = 2  # fit refused its input (a bad value, a refused resume): deterministic
INPUT_ERROR = "input_error"  # the result key that carries its message to the driver
ATTEMPT_END = "[sweep] attempt ended:"  # the log line with the reason an attempt failed
PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


class TrialFailed(RuntimeError):
    """The trial's ``fit`` process ended without finishing; the message says how."""


def _in_child_before_exec() -> None:
    """SIGTERM when the actor that started the process dies, so a killed actor still leaves a
    snapshot; and SIGINT/SIGTERM unblocked (Ray's processes block SIGINT, children inherit masks)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def lock_trial(path: Path, log=None):
    """An exclusive lock on the trial (blocking), to be inherited by its process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a")
    waiting = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if not waiting and log is not None:
                log.write("[sweep] waiting for the previous attempt's process to save its snapshot and exit\n")
            waiting = True
            time.sleep(0.5)


class FitTrial(tune.Trainable):
    """One trial: a ``fit`` process, polled every :data:`POLL_S` seconds, stopped with SIGTERM."""

    def setup(self, config):
        spec = self.spec = config["trial"]
        self.proc = self.lock = self.log = None
        self.run_dir, self.log_path = Path(spec["run_dir"]), Path(spec["log"])
        # Beside the run directory, not in it: fit owns that directory (and moves what a restart leaves).
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "a", buffering=1)
        self.log.write(f"\n[sweep] {time.strftime('%Y-%m-%d %H:%M:%S')} attempt on {os.uname().nodename}: "
                       f"python {' '.join(spec['args'])}\n")
        self.lock = lock_trial(Path(spec["lock"]), self.log)
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(spec["threads"]))
        if spec["tracking_uri"]:
            env["MLFLOW_TRACKING_URI"] = spec["tracking_uri"]
        self.log_start = self.log.tell()
        self.proc = subprocess.Popen(
            [sys.executable, *spec["args"]], cwd=spec["cwd"], env=env, stdin=subprocess.DEVNULL,
            stdout=self.log, stderr=subprocess.STDOUT, pass_fds=(self.lock.fileno(),),
            start_new_session=True,  # a Ctrl-C in the driver's terminal reaches the trial through Tune only
            preexec_fn=_in_child_before_exec if _LIBC is not None else None,
        )

    def step(self):
        try:
            code = self.proc.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            code = None
        env_steps, eval_return = read_progress(self.run_dir)
        result = {"env_steps": env_steps or 0, "eval_return": eval_return}
        if code is None:
            return result
        if code == 0:
            return {**result, "done": True}
        if code == INPUT_ERROR_EXIT_CODE:  # the same input fails the same way: ends the trial, no retry
            return {**result, "done": True, INPUT_ERROR: f"{INPUT_ERROR_PREFIX}: {self._last_error_line()}"}
        reason = self._failure(code)
        self.log.write(f"{ATTEMPT_END} {reason}\n")
        raise TrialFailed(reason)

    def _failure(self, code: int) -> str:
        if code in INTERRUPTED_EXIT_CODES:
            return f"fit stopped by a signal (exit {code}) after saving a snapshot"
        if code < 0:
            return f"fit was killed by {signal.Signals(-code).name}"
        return f"fit exited with code {code}: {self._last_error_line()} (log: {self.log_path})"

    def _last_error_line(self) -> str:
        """This attempt's last line of fit output that is not indented (a traceback's frames are)."""
        tail = _tail(self.log_path, self.log_start)
        return next((line for line in reversed(tail) if line.strip() and not line.startswith(" ")), "").strip()

    def cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fit finishes its update, saves a snapshot, exits 143
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass  # still saving: the lock keeps a retry from starting before it is done
        for handle in (self.lock, self.log):
            if handle is not None:
                handle.close()


def _tail(path: Path, start: int, lines: int = 40) -> list[str]:
    try:
        with open(path, "rb") as handle:
            handle.seek(start)
            return handle.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


class SweepProgress(tune.Callback):
    """Feeds Tune's trial events into the progress table, and marks trials that fail for good
    FAILED in MLflow with their error."""

    def __init__(self, table: ProgressTable, client, experiment: str):
        self.table, self.client, self.experiment = table, client, experiment

    def on_trial_start(self, iteration, trials, trial, **info):
        row = self.table.rows[trial_name(trial)]
        self.table.set(row.trial.name, "running", attempts=row.attempts + 1, note="")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.table.set(trial_name(trial), env_steps=result.get("env_steps") or None, eval_return=result.get("eval_return"))

    def on_trial_complete(self, iteration, trials, trial, **info):
        refused = (trial.last_result or {}).get(INPUT_ERROR)
        self.table.set(trial_name(trial), "failed" if refused else "finished", note=refused or "")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.table.set(trial_name(trial), "pending", note=f"retrying after: {error_line(trial)}")

    def on_trial_error(self, iteration, trials, trial, **info):
        error = error_line(trial)
        self.table.set(trial_name(trial), "failed", note=error)
        if self.client is not None:
            try:
                mark_failed(self.client, self.experiment, trial_name(trial), error)
            except Exception as err:  # noqa: BLE001  (the table and the trial's log still say it)
                print(f"warning: could not mark {trial_name(trial)} FAILED in MLflow: {err}", file=sys.stderr)

    def on_step_end(self, iteration, trials, **info):
        self.table.maybe_print()


def trial_name(trial) -> str:
    """Tune's name and directory for a trial: the run name."""
    return trial.config["trial"]["name"]


def error_line(trial) -> str:
    """The line of Tune's error record that says what happened."""
    text = str(trial.get_error() or "")
    for line in reversed(text.splitlines()):
        if "TrialFailed: " in line:
            return line.split("TrialFailed: ", 1)[1].strip()[:400]
    if "actor died" in text.lower() or "ActorDiedError" in text:
        return "the Ray worker running the trial died (killed, or out of memory); fit got SIGTERM and resumes"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines:
        return lines[-1][:400]
    return _last_attempt_end(trial) or "no error recorded by Ray; see the trial's log"


def _last_attempt_end(trial) -> str:
    """The reason the actor wrote into the trial's log when its attempt ended."""
    lines = _tail(Path(trial.config["trial"]["log"]), 0, lines=200)
    ends = [line for line in lines if line.startswith(ATTEMPT_END)]
    return ends[-1].removeprefix(ATTEMPT_END).strip()[:400] if ends else ""
