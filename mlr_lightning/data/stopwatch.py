"""Seconds spent per phase of a run (acting, sampling, ...), for the run's cost
(:mod:`mlr_lightning.training.cost`).

Coarse host wall clocks, never a CUDA synchronisation: a block that launches GPU work asynchronously
is charged for the launch, and the time the host later waits for that work is charged to the block
where it waits (see the cost module). TorchRL's ``timeit`` blocks in the same places report seconds
per call over the last logging window and are reset there; these totals last the whole attempt.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator


class Stopwatch:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] += seconds
