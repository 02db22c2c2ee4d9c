"""`pipelines new-model`: a spec, a DAG file and a starter GX suite for a model on your own data.

The suite is inferred from a sample of the source (column types, null shares, category sets,
ranges) and is a starting point for a person to review, not a contract anyone agreed to yet.
Nothing existing is overwritten.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import TypeAdapter, ValidationError

from pipelines.errors import ConfigError, SpecError
from pipelines.intervals import PartitionUnit
from pipelines.sources import SourceAccess, read_source
from pipelines.spec import EXPECTATIONS_DIR, TASK_OBJECTIVES, Source, load_spec

MAX_CATEGORIES = 30  # more distinct text values than this in the sample: an identifier or free text, not a feature


def parse_source(text: str, s3_connection: str | None, sparse: bool = False) -> dict[str, Any]:
    """`sql://CONNECTION/TABLE` or a file path or URI (with {start:...} placeholders for one file per partition).
    `sparse`: a missing partition file means no rows (label feeds), not a source still to wait for."""
    if text.startswith("sql://"):
        connection, _, table = text.removeprefix("sql://").partition("/")
        if not connection or not table:
            raise ConfigError(f"'{text}': a SQL source is sql://CONNECTION/TABLE (an Airflow connection id, a table)")
        return {"kind": "sql", "connection": connection, "table": table}
    source: dict[str, Any] = {"kind": "files", "path": text}
    if text.startswith("s3://") and s3_connection:
        source["connection"] = s3_connection
    if sparse and "{" in text:
        source["when_missing"] = "empty"
    return source


@dataclass(frozen=True)
class Inferred:
    numeric: list[str]
    categorical: list[str]
    left_out: dict[str, str]  # column: why it is not a feature
    expectations: list[dict[str, Any]]


def _numeric(values: pd.Series) -> pd.Series | None:
    if pd.api.types.is_bool_dtype(values):
        return None
    if pd.api.types.is_numeric_dtype(values):
        return values.astype("float64")
    parsed = pd.to_numeric(values, errors="coerce")
    present = values.notna()
    return parsed if present.any() and parsed[present].notna().mean() >= 0.99 else None


def infer(frame: pd.DataFrame, key: str, timestamp: str, not_features: set[str]) -> Inferred:
    """Features and a starter suite from a sample: what was seen, widened a little, for review."""
    expectations: list[dict[str, Any]] = [
        {
            "type": "expect_table_columns_to_match_set",
            "kwargs": {"column_set": list(frame.columns), "exact_match": True},
        },
        # A quiet partition (no rows) is a normal outcome; raise min_value if your feed is never quiet.
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 0}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": key}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": timestamp}},
        {"type": "expect_compound_columns_to_be_unique", "kwargs": {"column_list": [key, timestamp]}},
    ]
    numeric, categorical, left_out = [], [], {}
    for column in frame.columns:
        if column in {key, timestamp}:
            continue
        if column in not_features:
            left_out[column] = "the label or its arrival time: never a feature"
            continue
        values = frame[column]
        null_share = float(values.isna().mean())
        if null_share == 1.0:
            left_out[column] = "always empty in the sample"
            continue
        numbers = _numeric(values)
        if numbers is not None:
            numeric.append(column)
            low, high = float(numbers.min()), float(numbers.max())
            margin = (high - low) or abs(high) or 1.0  # seen values, widened by their span either way
            between = {"column": column, "min_value": round(low - margin, 6), "max_value": round(high + margin, 6)}
            expectations.append({"type": "expect_column_values_to_be_between", "kwargs": between})
        elif values.nunique() <= MAX_CATEGORIES:
            categorical.append(column)
            seen = sorted(str(v) for v in values.dropna().unique())
            in_set = {"column": column, "value_set": seen, "mostly": 0.99}
            expectations.append({"type": "expect_column_values_to_be_in_set", "kwargs": in_set})
        else:
            left_out[column] = f"{values.nunique()} distinct text values: an identifier or free text"
            continue
        mostly = {} if null_share == 0 else {"mostly": round(max(0.5, 1 - 2 * null_share), 3)}
        expectations.append({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": column, **mostly}})
    return Inferred(numeric, categorical, left_out, expectations)


def spec_text(name: str, args: dict[str, Any], inferred: Inferred, rows: int) -> str:
    """The spec YAML, commented where a person must decide."""
    partition = args["partition"]
    schedules = (
        '  train: "0 2 * * *"\n  score: "0 0 * * *"     # daily models score whole days, at midnight UTC\n'
        '  backtest: "0 4 * * *"\n'
        if partition == "day"
        else '  train: "0 2 * * *"\n  score: "0 * * * *"\n  backtest: "0 4 * * *"\n'
    )
    left_out = "".join(f"#   {column}: {why}\n" for column, why in inferred.left_out.items())
    return (
        f"# {name}: scaffolded by `pipelines new-model` from {rows} sample rows of "
        f"[{args['sample_start']}, {args['sample_end']}).\n"
        "# Review the features, the label delay, the schedules and expectations/"
        f"{name}.json before the first run.\n"
        + (f"# Columns left out of the features:\n{left_out}" if left_out else "")
        + f"name: {name}\n"
        f'description: ""\nowner: data-team\nstart_date: {args["sample_start"]}\n'
        f"partition: {partition}\n"
        "source:\n"
        f"  events: {json.dumps(args['events'])}\n"
        f"  labels: {json.dumps(args['labels'])}\n"
        "  wait_timeout_minutes: 60\n"
        f"entity_key: {args['entity_key']}\ntimestamp: {args['timestamp']}\n"
        "label:\n"
        f"  column: {args['label']}\n"
        f"  arrived_at_column: {args['arrived_at']}\n"
        "  delay_hours: 24        # how long after the event its label is known: set it from your data\n"
        + (f"  classes: {json.dumps(args['classes'])}\n" if args["task"] == "multiclass" else "")
        + f"task: {args['task']}          # binary | multiclass | regression\n"
        "features:\n"
        f"  numeric: {json.dumps(inferred.numeric)}\n"
        f"  categorical: {json.dumps(inferred.categorical)}\n"
        f"suite: {name}\n"
        "validation_policy: block   # block | warn | quarantine\n"
        f"schedules:\n{schedules}"
        "training:\n  window_days: 7\n  min_rows: 1000\n"
        f"  params:\n    objective: {TASK_OBJECTIVES[args['task']][0]}\n"
    )


DAG_FILE = '''"""DAGs of the {name} model, built from dags/models/{name}.yaml (scaffolded by `pipelines new-model`)."""

from pathlib import Path

from pipelines.airflow.dags import model_dags

globals().update(model_dags(Path(__file__).parent / "models" / f"{{Path(__file__).stem}}.yaml"))
'''


def new_model(
    name: str,
    events: dict[str, Any],
    labels: dict[str, Any],
    columns: dict[str, str],
    partition: PartitionUnit,
    sample: tuple[datetime, datetime],
    access: SourceAccess,
    dags_dir: Path,
    task: str = "binary",
    classes: list[str] | None = None,
) -> list[Path]:
    """Write the spec, the DAG file and the starter suite of a new model; returns their paths.
    A multiclass model needs its `classes` (the label's class names)."""
    if (task == "multiclass") != bool(classes):
        raise ConfigError(
            f"{name}: --classes (comma-separated class names) goes with --task multiclass, and only with it"
        )
    targets = [dags_dir / "models" / f"{name}.yaml", dags_dir / f"{name}.py", EXPECTATIONS_DIR / f"{name}.json"]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise ConfigError(f"{name}: {existing} already exist; new-model writes new files only (pick another name)")
    try:
        source = TypeAdapter(Source).validate_python(events)
    except ValidationError as exc:
        raise ConfigError(f"{name}: the events source {events}: {exc.errors()[0]['msg']}") from exc
    reads = read_source(source, access, columns["timestamp"], *sample, partition)
    frames = [r.read.frame for r in reads if len(r.read.frame.columns)]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    missing = [c for c in (columns["entity_key"], columns["timestamp"]) if c not in frame.columns]
    if frame.empty or missing:
        raise ConfigError(
            f"{name}: the sample [{sample[0].isoformat()}, {sample[1].isoformat()}) of {events} has "
            + (f"no column(s) {missing}; it has {list(frame.columns)}" if missing else "no rows; pick a busier range")
        )
    inferred = infer(frame, columns["entity_key"], columns["timestamp"], {columns["label"], columns["arrived_at"]})
    if not inferred.numeric and not inferred.categorical:
        raise ConfigError(f"{name}: no column of the sample can be a feature: {inferred.left_out}")
    suite = {
        "name": name,
        "meta": {
            "notes": f"Starter suite inferred by `pipelines new-model` from {len(frame)} rows of "
            f"[{sample[0].isoformat()}, {sample[1].isoformat()}): review every range and set before relying on it."
        },
        "expectations": inferred.expectations,
    }
    args = {
        **columns,
        "events": events,
        "labels": labels,
        "partition": partition,
        "task": task,
        "classes": classes,
        "sample_start": sample[0].isoformat(),
        "sample_end": sample[1].isoformat(),
    }
    contents = [spec_text(name, args, inferred, len(frame)), DAG_FILE.format(name=name), json.dumps(suite, indent=2)]
    written: list[Path] = []
    try:
        for target, content in zip(targets, contents, strict=True):
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("x") as handle:  # "x": never replace a file that appeared meanwhile
                handle.write(content)
            written.append(target)
        load_spec(targets[0])  # what we wrote must parse; else take it all back
    except (SpecError, OSError):
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return targets
