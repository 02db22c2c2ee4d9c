"""GX validation of one large hour (`validate_frame`: the suite's checkpoint, result kept in the lake)
against the same expectations written as plain pandas checks, in the same process.

Both are timed warm (GX imported, its context and checkpoint built, as in a backfill or a second
interval); the first GX run is printed apart. Then runs are repeated to show the per-run cost stays
flat as GX's result store fills (it keeps the newest GX_RESULTS_KEPT).

    python bench/validation.py [--rows 1000000] [--repeat 3] [--store-runs 250]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from score_interval import MODEL, big_hour


def pandas_checks(frame: pd.DataFrame, suite: dict[str, object]) -> bool:
    """The suite's expectations, each as the obvious pandas expression (with `mostly` where given)."""
    ok = True
    for expectation in suite["expectations"]:  # type: ignore[attr-defined]
        kind, kw = expectation["type"], expectation["kwargs"]
        column = frame[kw["column"]] if "column" in kw else None
        mostly = kw.get("mostly", 1.0)
        if kind == "expect_table_columns_to_match_set":
            ok &= set(frame.columns) == set(kw["column_set"])
        elif kind == "expect_table_row_count_to_be_between":
            ok &= len(frame) >= kw["min_value"]
        elif kind == "expect_column_values_to_not_be_null":
            ok &= column.notna().mean() >= mostly
        elif kind == "expect_compound_columns_to_be_unique":
            ok &= not frame.duplicated(subset=kw["column_list"]).any()
        else:
            present = column.dropna()
            if kind == "expect_column_values_to_match_regex":
                passed = present.astype("string").str.match(kw["regex"])
            elif kind == "expect_column_values_to_be_between":
                passed = present.between(kw["min_value"], kw["max_value"])
            elif kind == "expect_column_values_to_be_in_set":
                passed = present.isin(kw["value_set"])
            else:
                raise ValueError(f"no pandas check for {kind}")
            ok &= bool(passed.mean() >= mostly) if len(present) else True
    return bool(ok)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--store-runs", type=int, default=250, help="small runs to fill GX's result store")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_validate_") as home:
        os.environ["PIPELINES_HOME"] = home
        from pipelines.core.spec import load_spec
        from pipelines.stages.ingest import type_events
        from pipelines.stages.validate import GX_RESULTS_KEPT, gx_results_dir, validate_frame, warm_context
        from pipelines.storage.settings import get_settings

        settings = get_settings()
        spec = load_spec(settings.specs_dir / f"{MODEL}.yaml")
        suite = json.loads((Path(__file__).parents[1] / "expectations" / f"{spec.suite}.json").read_text())
        typed = type_events(spec, big_hour(datetime(2026, 1, 3, 10, tzinfo=UTC), args.rows), "bench")
        # As validate_and_publish reads a staged delivery: text as pyarrow-backed strings.
        frame = typed.astype({c: "string[pyarrow]" for c in typed.columns if pd.api.types.is_string_dtype(typed[c])})
        print(f"validation: {platform.machine()} {os.cpu_count()} cores, {len(frame):,} rows, "
              f"{len(suite['expectations'])} expectations of suite {spec.suite}")  # fmt: skip

        def gx_run(data: pd.DataFrame, name: str) -> float:
            began = time.perf_counter()
            outcome = validate_frame(
                data,
                spec.suite_path,
                settings.gx_root,
                lake=settings.lake,
                result_key=f"bench/{name}.json",
                run_name=name,
            )
            assert outcome.success, outcome.describe_failures()
            return time.perf_counter() - began

        began = time.perf_counter()
        warm_context(settings.gx_root)
        first = gx_run(frame, "first")
        print(f"  first GX run in the process (context and checkpoint built): {time.perf_counter() - began:.2f} s "
              f"(the validation itself {first:.2f} s)")  # fmt: skip
        ours = min(gx_run(frame, f"warm-{i}") for i in range(args.repeat))
        plain = float("inf")
        for _ in range(args.repeat):
            began = time.perf_counter()
            assert pandas_checks(frame, suite)
            plain = min(plain, time.perf_counter() - began)
        print(f"  GX checkpoint, warm : {ours:6.2f} s  {len(frame) / ours:>10,.0f} rows/s")
        print(
            f"  plain pandas checks : {plain:6.2f} s  {len(frame) / plain:>10,.0f} rows/s  (GX is {ours / plain:.2f}x)"
        )

        small = frame.head(1000)
        early = min(gx_run(small, f"early-{i}") for i in range(3))
        for i in range(args.store_runs):
            gx_run(small, f"fill-{i}")
        late = min(gx_run(small, f"late-{i}") for i in range(3))
        stored = len(list(gx_results_dir(settings.gx_root).rglob("*.json")))
        print(f"  1,000-row run with few stored results: {early:.3f} s; after {args.store_runs} more runs: {late:.3f} s "
              f"({late / early:.2f}x), {stored} results stored (the limit is {GX_RESULTS_KEPT})")  # fmt: skip


if __name__ == "__main__":
    main()
