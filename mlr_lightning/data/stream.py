"""The training data stream: collector -> replay -> sampled batches, as Lightning's dataloader.

Each agent step of the TorchRL collector (``env_steps_per_agent_step`` environment steps: DMC's
action repeat, 1 on Atari, whose x-axis counts agent steps) is handed to the stream's
:class:`StepWriter` as it is made and stored in the replay; once the random seed steps are done it
is followed by ``updates_per_step`` items, each one update's batch
(``replay.sample``, a TensorDict in the contract of :mod:`mlr_lightning.data.replay`). Lightning's
fit loop therefore drives interaction and learning at the paper's ratio (1 update per agent step on
DMC, 2 on Atari) with no loop around it.

The stream is also the unit of full-state resume: :meth:`ExperienceStream.state_dict` holds the
counters, the collector, the observation it acts on next, the running episode inside the simulator
and every random-number state,
so a resumed stream produces exactly the items the uninterrupted one would have.

``prefetch`` (DMC's ``replay.prefetch``) overlaps sampling with the update: a background thread
draws the next update's batch while the update and the next environment step run. The collector
stays in this thread and always acts with the live, finished policy; what changes is that each
batch (after the first) is drawn one agent step earlier, before the newest step is stored. The
thread draws from a generator of its own, saved in snapshots with the state it had before the
pending draw, so runs stay reproducible and resume exactly whatever the threads' timing. Off (the
default), sampling runs here, in the paper's order, from torch's global generator.
"""

from __future__ import annotations

import math
import random
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torch.utils.data import IterableDataset
from torchrl import timeit
from torchrl.collectors import Collector

from mlr_lightning.data.replay import Replay
from mlr_lightning.data.stopwatch import Stopwatch
from mlr_lightning.data.threads import one_intra_op_thread
from mlr_lightning.data.torchrl_internals import collector_observation, set_collector_observation
from mlr_lightning.envs.stacked import FrameStackEnv


class EnvironmentFailure(RuntimeError):
    """The environment kept crashing after ``max_env_restarts`` rebuilds."""


class ReplayWriteError(RuntimeError):
    """Storing a step failed: a fault of the replay, not of the environment, so never retried."""


_DONE = object()


@dataclass
class StreamCounters:
    """Progress of the interaction (saved in checkpoints)."""

    agent_steps: int = 0
    episodes: int = 0  # completed episodes
    episode_id: int = 0  # id of the running episode in the replay; also advanced by abandoned ones
    env_restarts: int = 0  # environment crashes survived by rebuilding it
    collector_start: int = 0  # agent step at which the current collector was built
    owed_updates: int = 0  # updates still due for the last collected step (several updates per step)
    last_episode_return: float = math.nan


class StepWriter:
    """What the collector writes each agent step into (its ``replay_buffer``): the stream's replay.

    TorchRL's collector hands a replay buffer each step as it is made (``extend_buffer=False``)
    instead of stacking it into a batch, copying it and yielding it (bookkeeping that cost a
    sizeable share of a step, docs/benchmarks.md). It reads ``write_count`` to know when the random seed steps are over.
    """

    def __init__(self, stream: "ExperienceStream"):
        self.stream = stream

    @property
    def write_count(self) -> int:
        """Agent steps collected by the current collector (compared to its ``init_random_frames``)."""
        return self.stream.counters.agent_steps - self.stream.counters.collector_start

    def add(self, step: TensorDictBase) -> None:
        try:
            self.stream._store(step)
        except Exception as err:
            raise ReplayWriteError(f"storing agent step {self.stream.counters.agent_steps} failed: {err!r}") from err


# (start, env_restarts, writer) -> a collector over a new environment, writing into ``writer``, for the agent
# steps from ``start`` on; ``env_restarts`` (the crashes survived so far) lets a rebuilt environment be seeded apart.
CollectorFactory = Callable[[int, int, StepWriter], Collector]


class ExperienceStream(IterableDataset):
    def __init__(
        self,
        make_collector: CollectorFactory,
        replay: Replay,
        total_agent_steps: int,
        init_steps: int,
        updates_per_step: int,
        env_steps_per_agent_step: int,
        max_env_restarts: int,
        prefetch: bool = False,
    ):
        super().__init__()
        self.make_collector, self.replay = make_collector, replay
        self.total_agent_steps, self.init_steps, self.updates_per_step = total_agent_steps, init_steps, updates_per_step
        self.env_steps_per_agent_step, self.max_env_restarts = env_steps_per_agent_step, max_env_restarts
        self.counters = StreamCounters()
        self.collector: Collector | None = None
        self._resume_state: dict | None = None
        self.prefetch = prefetch
        self._worker: ThreadPoolExecutor | None = None
        self._pending: Future | None = None  # the next update's batch, being drawn by the worker
        self._generator_state: torch.Tensor | None = None  # the worker's generator before that draw
        self.stopwatch = Stopwatch()  # this attempt's seconds acting and sampling (the run's cost)

    @property
    def env_steps(self) -> int:
        return self.counters.agent_steps * self.env_steps_per_agent_step

    def __len__(self) -> int:
        """Number of updates: ``updates_per_step`` per agent step from ``init_steps`` on (as the official loops)."""
        return (self.total_agent_steps - self.init_steps) * self.updates_per_step

    def __iter__(self):
        self._start()
        # A snapshot taken between the updates of one agent step: the resumed stream owes the rest.
        for _ in range(self.counters.owed_updates):
            self.counters.owed_updates -= 1
            yield self.sample()
        while self._collect():
            if self.init_steps <= self.counters.agent_steps < self.total_agent_steps:
                for update in range(self.updates_per_step):
                    self.counters.owed_updates = self.updates_per_step - 1 - update
                    batch = self.sample()
                    if self.counters.agent_steps == self.total_agent_steps - 1 and self.counters.owed_updates == 0:
                        # Lightning stops after len(self) batches, so the final agent step, which no
                        # update follows (as in the official loops), is collected here.
                        self._collect()
                    yield batch

    def _start(self) -> None:
        """A collector for the remaining steps; on resume, put back the saved state (RNG last)."""
        state, self._resume_state = self._resume_state, None
        self.replay.recycle_frames(2)  # each batch is consumed when its update starts (see recycle_frames)
        if self.prefetch and self.replay.generator is None:
            # Seeded without drawing from the global generator: its state is the rank's seed.
            self.replay.generator = torch.Generator().manual_seed(torch.initial_seed() + 1)
        if state is None:
            self._new_collector(self.counters.agent_steps)
            return
        self.counters = StreamCounters(**state["counters"])
        self._new_collector(self.counters.collector_start)
        # Building the collector reset its environment; now overwrite that with the saved episode.
        # The environment keeps its episode in the observation and the simulator (FrameStackEnv):
        # what snapshots of earlier versions saved of TorchRL transforms and trajectory ids is not used.
        self.collector.load_state_dict({**state["collector"], "env_state_dict": {}})
        set_collector_observation(self.collector, state["carrier"].exclude("collector"))
        self.collector.env.set_state(state["simulator"])
        set_rng_states(state["rng"])
        self._restore_prefetch(state.get("prefetch"))

    def _new_collector(self, start: int) -> None:
        """Replace the collector (and its environment) by one for the agent steps from ``start`` on."""
        self.close()
        self.collector = self.make_collector(start, self.counters.env_restarts, StepWriter(self))
        self._collecting = iter(self.collector)

    def _collect(self) -> bool:
        """One agent step into the replay (False when the collector is done); a crashing environment
        is rebuilt (its episode abandoned), not fatal."""
        with timeit("data/collect"), self.stopwatch("acting"), one_intra_op_thread():
            while True:
                try:
                    return next(self._collecting, _DONE) is not _DONE
                except ReplayWriteError:
                    raise
                except Exception as err:  # a renderer or simulator failure inside env.step / reset
                    self._restart_environment(err)

    def _restart_environment(self, err: Exception) -> None:
        self.counters.env_restarts += 1
        if self.counters.env_restarts > self.max_env_restarts:
            raise EnvironmentFailure(
                f"the environment crashed {self.counters.env_restarts} times (train.max_env_restarts="
                f"{self.max_env_restarts}); last error: {err!r}"
            ) from err
        warnings.warn(f"environment crashed at agent step {self.counters.agent_steps} ({err!r}); "
                      f"rebuilding it (restart {self.counters.env_restarts}/{self.max_env_restarts})")
        self._wait_for_draw()
        self.replay.abandon_episode()
        self.counters.episode_id += 1
        self.counters.collector_start = self.counters.agent_steps
        self._new_collector(self.counters.agent_steps)

    def sample(self) -> TensorDict:
        """One update's batch, with the x-axis position and the last finished episode's return."""
        progress = self.counters.agent_steps / self.total_agent_steps
        with self.stopwatch("sampling"):  # with prefetch: only the wait for the batch drawn ahead
            if not self.prefetch:
                batch = self.replay.sample(progress)
            else:  # the batch drawn ahead (none before the first update), and the next one drawn from now on
                batch = self.replay.sample(progress) if self._pending is None else self._pending.result()
                self._draw_ahead(progress)
        batch["env_steps"] = torch.tensor(self.env_steps)
        batch["episode_return"] = torch.tensor(self.counters.last_episode_return)
        return batch

    # ------------------------------------------------------------------------------ prefetching
    def _draw_ahead(self, progress: float) -> None:
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-prefetch")
        self._generator_state, self._pending_progress = self.replay.generator.get_state(), progress
        self._pending = self._worker.submit(self.replay.sample, progress)

    def _wait_for_draw(self) -> None:
        """The worker reads the replay: no write before its draw is done."""
        if self._pending is not None:
            self._pending.exception()

    def _restore_prefetch(self, state: dict | None) -> None:
        if state is None:
            return
        self.replay.generator = torch.Generator()
        self.replay.generator.set_state(state["generator"])
        if state["pending"] is not None:  # redraw the pending batch: the replay is as it was then
            self._draw_ahead(state["pending"])

    def _prefetch_state(self) -> dict | None:
        if not self.prefetch or self.replay.generator is None:
            return None
        self._wait_for_draw()
        pending = self._pending is not None
        return {"generator": self._generator_state if pending else self.replay.generator.get_state(),
                "pending": self._pending_progress if pending else None}

    def _store(self, step: TensorDictBase) -> None:
        """One agent step from the collector (``[]``) into the replay, and the episode counters."""
        self._wait_for_draw()
        self.replay.add(step, self.counters.episode_id)
        self.counters.agent_steps += 1
        if step["next", "done"]:
            self.counters.episodes += 1
            self.counters.episode_id += 1
            self.counters.last_episode_return = step["next", "episode_reward"].item()

    # ------------------------------------------------------------------------------ full state
    def state_dict(self) -> dict:
        """Everything but the replay contents (see :meth:`Replay.state_dict`)."""
        state = {"counters": asdict(self.counters), "rng": rng_states(), "prefetch": self._prefetch_state()}
        if self.collector is not None:
            state |= {
                "collector": self.collector.state_dict(),
                "carrier": collector_observation(self.collector).clone(),
                "simulator": self.collector.env.get_state(),
            }
        return state

    def load_state_dict(self, state: dict) -> None:
        """Applied when iteration starts, after Lightning has built everything else."""
        if "collector" not in state:  # saved before collection began: nothing ran yet
            self.counters = StreamCounters(**state["counters"])
            set_rng_states(state["rng"])
            self._restore_prefetch(state.get("prefetch"))
            return
        self._resume_state = state

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker, self._pending = None, None
        if self.collector is not None:
            try:
                self.collector.shutdown()
            except Exception:  # a crashed environment may fail to close; it is being replaced anyway
                pass
            self.collector = None


def rng_states() -> dict:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


def make_collector(env: FrameStackEnv, policy, writer, total_agent_steps: int, init_steps: int,
                   policy_device: torch.device) -> Collector:
    """One environment stepped one agent step per iteration, each step handed to ``writer.add`` as it
    is made; uniform random actions for the first ``init_steps`` (counted by ``writer.write_count``).
    The iterator yields None per step."""
    return Collector(
        env,
        policy,
        frames_per_batch=1,
        total_frames=total_agent_steps,
        init_random_frames=init_steps,
        policy_device=policy_device,
        env_device="cpu",
        storing_device="cpu",
        auto_register_policy_transforms=False,  # the policy needs no extra env transform
        replay_buffer=writer,
        extend_buffer=False,  # each step straight to the writer, no batch
        track_traj_ids=False,  # the stream numbers episodes itself, across collector rebuilds
        trust_policy=True,  # the policy is placed by Lightning, not by the collector
    )
