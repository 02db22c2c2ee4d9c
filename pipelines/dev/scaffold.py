"""`pipelines new-model`: a spec, a DAG file and a starter GX suite for a model on your own data.

The suite is inferred from a sample of the source (column types, null shares, category sets,
ranges) and is a starting point for a person to review, not a contract anyone agreed to yet.
Nothing existing is overwritten.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import TypeAdapter, ValidationError

from pipelines.core.errors import ConfigError, SpecError
from pipelines.core.intervals import PartitionUnit
from pipelines.core.project import Project
from pipelines.core.spec import ModelSpec, Source, load_spec
from pipelines.core.tasks import Task
from pipelines.stages.ingest import type_events
from pipelines.stages.suites import NO_NULL_CHECK_ABOVE, NULL_MARGIN
from pipelines.storage.sources import SourceAccess, read_source

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
    window_days: int = 28
    window_reason: str = ""
    unchecked: dict[str, str] = field(default_factory=dict)  # column: why it has no null check
    drift_exclude: dict[str, str] = field(default_factory=dict)  # feature: why drift leaves it alone


TRAINING_ROWS_TARGET = 20_000  # the scaffold sizes the training window to hold at least this many rows
# Parts of the timestamp that never repeat within a training window as they will when scored (a
# model learns "January" and then sees only March), and parts that repeat, whose range is the
# calendar's, never the sample's: a weekday, which one window (a day or an hour) holds a single
# value of, so it would drift on every window, and the hour and minute.
NEVER, WEEKDAY, HOUR, MINUTE = "never repeats", "weekday", "hour", "minute"
CALENDAR_PARTS: dict[str, tuple[str, Any]] = {  # part: (kind, how to compute it)
    "year": (NEVER, lambda t: t.dt.year),
    "quarter": (NEVER, lambda t: t.dt.quarter),
    "month": (NEVER, lambda t: t.dt.month),
    "week": (NEVER, lambda t: t.dt.isocalendar().week.astype("int64")),
    "day of month": (NEVER, lambda t: t.dt.day),
    "day of year": (NEVER, lambda t: t.dt.dayofyear),
    "day of week": (WEEKDAY, lambda t: t.dt.dayofweek),
    "day of week (1-7)": (WEEKDAY, lambda t: t.dt.dayofweek + 1),
    "hour": (HOUR, lambda t: t.dt.hour),
}
CALENDAR_NAMES = {
    **dict.fromkeys(
        ["year", "yr", "quarter", "qtr", "month", "mon", "week", "weekofyear", "day", "dayofmonth", "dom",
         "dayofyear", "doy", "date"],
        NEVER,
    ),
    **dict.fromkeys(["dayofweek", "dow", "weekday"], WEEKDAY),
    **dict.fromkeys(["hour", "hr"], HOUR),
    "minute": MINUTE,
}  # fmt: skip
NATURAL_RANGE = {WEEKDAY: (0, 7), HOUR: (0, 23), MINUTE: (0, 59)}  # 0-6 and 1-7 weekdays both fit
IDENTIFIER_TOKENS = {"id", "uuid", "guid", "num", "number", "nbr", "identifier"}


def _tokens(name: str) -> list[str]:
    """`FlightNum`, `flight_num` and `flight-num` all give ["flight", "num"]."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return [t for t in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if t]


def _numeric(values: pd.Series) -> pd.Series | None:
    if pd.api.types.is_bool_dtype(values):
        return None
    if pd.api.types.is_numeric_dtype(values):
        return values.astype("float64")
    parsed = pd.to_numeric(values, errors="coerce")
    present = values.notna()
    return parsed if present.any() and parsed[present].notna().mean() >= 0.99 else None


@dataclass(frozen=True)
class Role:
    """What a column is when it is not a plain feature: left out of features (and so of drift), or
    a feature that drift leaves alone, or one whose range is the calendar's."""

    feature: bool
    why: str
    drift: bool = True  # tested for drift
    natural_range: tuple[int, int] | None = None


def column_role(
    column: str, values: pd.Series, numbers: pd.Series | None, stamps: pd.Series, unit: PartitionUnit
) -> Role | None:
    """Time and identifiers, by their values or their names; None for a plain feature.

    Identifiers carry no pattern a model can reuse for the next row.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        return Role(False, "a time: use it through features you derive on purpose, not as a number")
    tokens = _tokens(column)
    part = None
    if numbers is not None:
        present = numbers.notna() & stamps.notna()
        for name, (kind, of) in CALENDAR_PARTS.items():
            seen = of(stamps[present])
            # a part constant over the sample (the month of a January sample) could match by chance
            if present.any() and seen.nunique() > 1 and (numbers[present] == seen).mean() >= 0.95:
                part = (f"the timestamp's {name}", kind)
                break
    named = CALENDAR_NAMES.get(tokens[-1] if tokens else "") or CALENDAR_NAMES.get("".join(tokens))
    if part is None and named is not None:
        part = ("a calendar part by its name", named)
    if part is not None:
        what, kind = part
        if kind == NEVER:
            return Role(False, f"{what}: it does not repeat within a training window as it will when scored")
        one_value = kind == WEEKDAY or unit == "hour"  # a day holds one weekday; an hour one hour
        return Role(
            True,
            f"{what}: a feature with the calendar's range"
            + (f"; one {unit} holds one value of it, so it is not tested for drift" if one_value else ""),
            drift=not one_value,
            natural_range=NATURAL_RANGE[kind] if numbers is not None else None,
        )
    whole = numbers is not None and bool((numbers.dropna() % 1 == 0).all())
    if whole and IDENTIFIER_TOKENS & set(tokens):
        return Role(False, "an identifier by its name (whole numbers): it names a row, it is no pattern")
    if whole and values.notna().sum() >= 1000 and values.nunique() >= 0.99 * values.notna().sum():
        return Role(False, "a whole number unique to almost every row: an identifier")
    return None


def training_window(rows: int, sample_days: float) -> tuple[int, str]:
    """Whole weeks (so every weekday weighs the same) holding at least TRAINING_ROWS_TARGET rows at
    the sample's rate, between 4 weeks and a year."""
    per_day = rows / max(sample_days, 1 / 24)
    weeks = math.ceil(TRAINING_ROWS_TARGET / per_day / 7) if per_day else 52
    days = min(max(weeks, 4), 52) * 7
    return days, (
        f"{per_day:,.0f} rows a day in the sample: {days} days hold ~{per_day * days:,.0f} rows "
        f"(target {TRAINING_ROWS_TARGET:,}, whole weeks, 28 to 364 days)"
    )


def _null_check(
    column: str, is_null: pd.Series, parts: pd.Series, unit: PartitionUnit
) -> tuple[dict[str, Any] | None, str]:
    """A not-null expectation every partition of the sample passes, or None, and where it came from."""
    shares = is_null.groupby(parts).mean()
    worst, best = float(shares.max()), float(shares.min())
    if worst == 0:
        return {"column": column}, f"never null in the {len(shares)} {unit}s of the sample"
    allowed = worst + max(NULL_MARGIN, (worst - best) / 4)
    seen = f"null in {best:.1%} to {worst:.1%} of a {unit}'s rows over the {len(shares)} {unit}s of the sample"
    if allowed >= NO_NULL_CHECK_ABOVE:
        return None, f"{seen}: no null check (one the sample supports would allow almost every row null)"
    mostly = math.floor((1 - allowed) * 1000) / 1000
    return {"column": column, "mostly": mostly}, (
        f"{seen}; allows {allowed:.1%}: the worst {unit} plus a quarter of the spread (at least {NULL_MARGIN:.0%})"
    )


def _expectation(kind: str, kwargs: dict[str, Any], why: str) -> dict[str, Any]:
    return {"type": kind, "kwargs": kwargs, "meta": {"notes": why}}


def infer(
    frame: pd.DataFrame,
    key: str,
    timestamp: str,
    not_features: set[str],
    unit: PartitionUnit = "day",
    sample_days: float | None = None,
) -> Inferred:
    """Features and a starter suite from a sample: what was seen, widened a little, for review.

    Sound by construction: every expectation passes on every partition (day or hour) of the sample,
    since each bound is the extreme over those partitions, widened. Each says where it came from.
    """
    stamps = pd.to_datetime(frame[timestamp], utc=True, errors="coerce")
    parts = stamps.dt.floor("D" if unit == "day" else "h")
    sample = f"{len(frame)} rows, {parts.nunique()} {unit}s"
    expectations: list[dict[str, Any]] = [
        _expectation(
            "expect_table_columns_to_match_set",
            {"column_set": list(frame.columns), "exact_match": True},
            f"the sample's columns ({sample})",
        ),
        _expectation(
            "expect_table_row_count_to_be_between",
            {"min_value": 0},
            f"a quiet {unit} (no rows) is a normal outcome; raise min_value if your feed is never quiet",
        ),
        _expectation("expect_column_values_to_not_be_null", {"column": key}, "the entity key: every row has one"),
        _expectation("expect_column_values_to_not_be_null", {"column": timestamp}, "the event time: every row has one"),
        _expectation(
            "expect_compound_columns_to_be_unique",
            {"column_list": [key, timestamp]},
            "one row per entity and time: predictions are logged by this key",
        ),
    ]
    numeric, categorical, left_out, unchecked, drift_exclude = [], [], {}, {}, {}
    for column in frame.columns:
        if column in {key, timestamp}:
            continue
        if column in not_features:
            left_out[column] = "the label or its arrival time: never a feature"
            continue
        values = frame[column]
        if values.isna().all():
            left_out[column] = "always empty in the sample"
            continue
        numbers = _numeric(values)
        role = column_role(column, values, numbers, stamps, unit)
        if role is not None and not role.feature:
            left_out[column] = role.why
            continue
        if role is not None and not role.drift:
            drift_exclude[column] = role.why
        if numbers is not None and role is not None and role.natural_range is not None:
            numeric.append(column)
            low_bound, high_bound = role.natural_range
            between = {"column": column, "min_value": low_bound, "max_value": high_bound}
            why = f"{role.why}: not the sample's range"
            expectations.append(_expectation("expect_column_values_to_be_between", between, why))
        elif numbers is not None:
            numeric.append(column)
            low, high = float(numbers.min()), float(numbers.max())
            margin = (high - low) or abs(high) or 1.0  # seen values, widened by their span either way
            # ... but a column never negative in the sample (a distance, a count, a price) stays so.
            floor = max(low - margin, 0.0) if low >= 0 else low - margin
            between = {"column": column, "min_value": round(floor, 6), "max_value": round(high + margin, 6)}
            why = f"seen {low:g} to {high:g} in the sample ({sample}), widened by that span either way" + (
                ", but never below 0, as in the sample" if low >= 0 > low - margin else ""
            )
            expectations.append(_expectation("expect_column_values_to_be_between", between, why))
        elif values.nunique() <= MAX_CATEGORIES:
            categorical.append(column)
            seen = sorted(str(v) for v in values.dropna().unique())
            why = f"the {len(seen)} values seen in the sample ({sample}); up to 1% of a {unit}'s rows may be new"
            in_set = {"column": column, "value_set": seen, "mostly": 0.99}
            expectations.append(_expectation("expect_column_values_to_be_in_set", in_set, why))
        else:
            left_out[column] = f"{values.nunique()} distinct text values: an identifier or free text"
            continue
        check, why = _null_check(column, values.isna(), parts, unit)
        if check is None:
            unchecked[column] = why
        else:
            expectations.append(_expectation("expect_column_values_to_not_be_null", check, why))
    if sample_days is None:  # the span of partitions seen
        sample_days = (parts.max() - parts.min()).total_seconds() / 86400 + (1 if unit == "day" else 1 / 24)
    window_days, window_reason = training_window(len(frame), sample_days)
    return Inferred(numeric, categorical, left_out, expectations, window_days, window_reason, unchecked, drift_exclude)


def sample_of(
    name: str,
    feed: str,
    source_fields: dict[str, Any],
    time_column: str,
    sample: tuple[datetime, datetime],
    access: SourceAccess,
    partition: PartitionUnit,
) -> pd.DataFrame:
    """The raw rows of one feed (events or labels) over the sample's range, read as the tasks read them."""
    try:
        source = TypeAdapter(Source).validate_python(source_fields)
    except ValidationError as exc:
        raise ConfigError(f"{name}: the {feed} source {source_fields}: {exc.errors()[0]['msg']}") from exc
    reads = read_source(source, access, time_column, *sample, partition)
    frames = [r.read.frame for r in reads if len(r.read.frame.columns)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def label_delay(
    name: str,
    labels: dict[str, Any],
    columns: dict[str, str],
    sample: tuple[datetime, datetime],
    access: SourceAccess,
    partition: PartitionUnit,
) -> tuple[int, str]:
    """`label.delay_hours` from the labels that arrived in the sample's range, and where it came from.

    The label feed is read now, not at the first training: a wrong table or column name is named
    before any file is written. Every label of the sample must have been known within the delay
    (the backtest waits that long before it calls a day's cohort complete), so it is the longest
    delay seen, in whole hours."""
    frame = sample_of(name, "labels", labels, columns["arrived_at"], sample, access, partition)
    needed = [columns["entity_key"], columns["timestamp"], columns["label"], columns["arrived_at"]]
    missing = [c for c in needed if c not in frame.columns]
    if frame.empty:
        return 24, "no label arrived in the sample's range: set it from your data (how long after the event)"
    if missing:
        raise ConfigError(
            f"{name}: the labels {labels} have no column(s) {missing} (--entity-key, --timestamp, --label, "
            f"--arrived-at); they have {list(frame.columns)}"
        )
    delays = (
        pd.to_datetime(frame[columns["arrived_at"]], utc=True, errors="coerce")
        - pd.to_datetime(frame[columns["timestamp"]], utc=True, errors="coerce")
    ).dropna() / pd.Timedelta(hours=1)
    if delays.empty:
        return 24, "the sample's labels have no readable times: set it from your data"
    longest = max(0, math.ceil(float(delays.max())))
    return longest, (
        f"every one of the {len(delays)} labels that arrived in the sample came within {longest} h of its event "
        f"(median {float(delays.median()):.1f} h)"
    )


def suite_failures_on_sample(
    suite: dict[str, Any], frame: pd.DataFrame, timestamp: str, unit: PartitionUnit
) -> dict[str, list[str]]:
    """Which partitions (days or hours) of the sample the suite fails, and how: none, by construction."""
    from pipelines.stages.validate import failed_by_partition  # GX imports slowly: only when scaffolding

    parts = pd.to_datetime(frame[timestamp], utc=True, errors="coerce").dt.floor("D" if unit == "day" else "h")
    partitions = {str(p.isoformat()): part.reset_index(drop=True) for p, part in frame.groupby(parts)}
    failed = failed_by_partition(suite, partitions)
    return {partition: [f.describe() for f in failures] for partition, failures in failed.items()}


CALIBRATION_ROWS_PER_HOUR = 40


def hourly_reference_rows(window_days: int) -> int:
    """The drift reference an hourly model needs for thresholds calibrated on its hours (the default
    5,000 rows over a month is ~7 a hour, too few), within what Evidently runs in about a second."""
    return min(50_000, max(5_000, CALIBRATION_ROWS_PER_HOUR * 24 * window_days))


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
        f"  delay_hours: {args.get('delay_hours', 24)}   # {args.get('delay_reason', 'how long after the event its label is known: set it from your data')}\n"
        + (f"  classes: {json.dumps(args['classes'])}\n" if Task(args["task"]).has_classes else "")
        + f"task: {args['task']}          # binary | multiclass | regression\n"
        "features:\n"
        f"  numeric: {json.dumps(inferred.numeric)}\n"
        f"  categorical: {json.dumps(inferred.categorical)}\n"
        f"suite: {name}\n"
        "validation_policy: block   # block | warn | quarantine\n"
        f"schedules:\n{schedules}"
        "drift:\n"
        "  # Effect sizes (normed Wasserstein, Jensen-Shannon), each threshold raised to how far the\n"
        "  # training window's own days are from the rest of it: see DriftSpec in pipelines/core/spec.py.\n"
        "  num_method: wasserstein\n  cat_method: jensenshannon\n  calibrate: true\n"
        + (
            f"  reference_rows: {hourly_reference_rows(inferred.window_days)}   # calibrating on hours needs "
            f"~{CALIBRATION_ROWS_PER_HOUR} rows of each hour in the stored reference\n"
            if partition == "hour"
            else ""
        )
        + (
            "  exclude:\n" + "".join(f"    - {c}   # {why}\n" for c, why in inferred.drift_exclude.items())
            if inferred.drift_exclude
            else ""
        )
        + f"training:\n  window_days: {inferred.window_days}   # {inferred.window_reason}\n  min_rows: 1000\n"
        f"  params:\n    objective: {Task(args['task']).objectives[0]}\n"
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
    *,
    columns: dict[str, str],
    partition: PartitionUnit,
    sample: tuple[datetime, datetime],
    access: SourceAccess,
    project: Project,
    task: Task = Task.BINARY,
    classes: list[str] | None = None,
) -> list[Path]:
    """Write the spec, the DAG file and the starter suite of a new model; returns their paths.
    A multiclass model needs its `classes` (the label's class names)."""
    if task.has_classes != bool(classes):
        raise ConfigError(
            f"{name}: --classes (comma-separated class names) goes with --task multiclass, and only with it"
        )
    targets = [project.specs_dir / f"{name}.yaml", project.dags_dir / f"{name}.py", project.suite_path(name)]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise ConfigError(f"{name}: {existing} already exist; new-model writes new files only (pick another name)")
    frame = sample_of(name, "events", events, columns["timestamp"], sample, access, partition)
    missing = [c for c in (columns["entity_key"], columns["timestamp"]) if c not in frame.columns]
    if frame.empty or missing:
        raise ConfigError(
            f"{name}: the sample [{sample[0].isoformat()}, {sample[1].isoformat()}) of {events} has "
            + (f"no column(s) {missing}; it has {list(frame.columns)}" if missing else "no rows; pick a busier range")
        )
    delay_hours, delay_reason = label_delay(name, labels, columns, sample, access, partition)
    sample_days = (sample[1] - sample[0]).total_seconds() / 86400
    not_features = {columns["label"], columns["arrived_at"]}
    inferred = infer(frame, columns["entity_key"], columns["timestamp"], not_features, partition, sample_days)
    if not inferred.numeric and not inferred.categorical:
        raise ConfigError(f"{name}: no column of the sample can be a feature: {inferred.left_out}")
    suite = {
        "name": name,
        "meta": {
            "notes": f"Starter suite inferred by `pipelines new-model` from {len(frame)} rows of "
            f"[{sample[0].isoformat()}, {sample[1].isoformat()}): review every range and set before relying on it. "
            "Every expectation passes on every partition of that sample; each says where its bound came from.",
            **({"no_null_check": inferred.unchecked} if inferred.unchecked else {}),
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
        "delay_hours": delay_hours,
        "delay_reason": delay_reason,
    }
    text = spec_text(name, args, inferred, len(frame))
    # The suite checks what ingest publishes: the sample typed by the spec (a CSV's numbers are text until then).
    typed = type_events(ModelSpec.model_validate(yaml.safe_load(text)), frame, f"the sample of {events}")
    broken = suite_failures_on_sample(suite, typed, columns["timestamp"], partition)
    if broken:
        raise ConfigError(f"{name}: the inferred suite fails its own sample, so nothing was written: {broken}")
    contents = [text, DAG_FILE.format(name=name), json.dumps(suite, indent=2)]
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
