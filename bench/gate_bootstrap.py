"""How long the promotion gate's paired bootstrap takes, by holdout size and metric.

Run: `uv run python bench/gate_bootstrap.py [rows ...]`. Prints one line per (rows, metric) with
the conditions (samples, CPU count). Timings are measured here, never asserted in tests.
"""

from __future__ import annotations

import os
import platform
import sys
import time

import numpy as np

from pipelines.stages.gate import bootstrap_improvement

SAMPLES = 1000


def synthetic(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, rows).astype("float64")
    signal = labels + rng.normal(0, 1, rows)
    challenger = 1 / (1 + np.exp(-(signal + rng.normal(0, 0.5, rows))))
    champion = 1 / (1 + np.exp(-(signal + rng.normal(0, 0.7, rows))))
    return labels, challenger, champion


def main(sizes: list[int]) -> None:
    print(
        f"gate bootstrap: {SAMPLES} paired resamples, 95% interval; python {platform.python_version()}, "
        f"numpy {np.__version__}, {os.cpu_count()} CPU(s), {platform.machine()}"
    )
    for rows in sizes:
        labels, challenger, champion = synthetic(rows, 0)
        for metric in ("auc", "logloss"):
            started = time.perf_counter()
            interval = bootstrap_improvement(
                metric, labels, challenger, champion, samples=SAMPLES, confidence=0.95, seed=0
            )
            seconds = time.perf_counter() - started
            print(
                f"  rows={rows:>9,} metric={metric:<7} {seconds:7.2f} s   "
                f"improvement {interval.point:+.4f} [{interval.lower:+.4f}, {interval.upper:+.4f}]"
            )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [7_000, 100_000, 1_000_000])
