"""Seconds spent per step of a stage, for its outcome line and the benchmarks."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TypeVar

T = TypeVar("T")


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

    @contextmanager
    def entered(self, name: str, manager: AbstractContextManager[T]) -> Iterator[T]:
        """`with manager` whose entry and exit count as step `name` and whose body does not (a bulk
        load whose server-side work ends as it is left, say)."""
        with self.step(name):
            value = manager.__enter__()
        try:
            yield value
        except BaseException:
            with self.step(name):
                if not manager.__exit__(*sys.exc_info()):
                    raise
        else:
            with self.step(name):
                manager.__exit__(None, None, None)
