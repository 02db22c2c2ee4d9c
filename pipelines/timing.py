"""Seconds spent per step of a stage, for its outcome line and the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class StepTimes(dict[str, float]):
    """Accumulated wall-clock seconds by step name (a step timed in several chunks adds up)."""

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - began

    def rounded(self) -> dict[str, float]:
        return {name: round(seconds, 3) for name, seconds in self.items()}
