"""Stage 1: stage one interval of the source in the lake, typed, one delivery per partition.

Nothing is published here: `pipelines.stages.validate` publishes a delivery once it passed its suite.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.distinct import by_distinct
from pipelines.core.errors import BadDataError, PermanentError, SourceMissingError
from pipelines.core.intervals import STEP, interval_key, partitions_between
from pipelines.core.spec import ModelSpec, suite_columns
from pipelines.storage.lake import Lake, partition_key, stage
from pipelines.storage.sources import CSV_MISSING, SourceAccess, read_source

__all__ = ["SourceMissingError", "ingest", "type_events"]

log = logging.getLogger(__name__)

ARROW_TEXT = pd.StringDtype("pyarrow")


def expected_columns(spec: ModelSpec) -> list[str]:
    """The header of a partition without rows: the spec's columns, then the rest its suite knows."""
    ours = [spec.entity_key, spec.timestamp, *spec.features.all]
    suite = json.loads(spec.suite_path.read_text())
    return ours + sorted(suite_columns(suite) - set(ours))


SET_ASIDE_BECAUSE = "set_aside_because"  # why a row was set aside at ingest (policy quarantine)


def _missing_markers_as_missing(values: pd.Series) -> pd.Series:
    """The texts read_csv reads as missing ("n/a", "NULL", "") mean missing in every source: a parquet
    file or a table holding them says what a CSV file holding them says."""
    if values.dtype == ARROW_TEXT or not (pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values)):
        return values  # a CSV read by Arrow has them as nulls already; numbers and times hold none
    return values.mask(values.isin(CSV_MISSING))


def type_events(spec: ModelSpec, frame: pd.DataFrame, where: str, set_aside: bool = False) -> pd.DataFrame:
    """Give every spec'd column its type (key and categories text, numbers float, time UTC);
    a value that cannot take its type is an error naming `where` and the column.

    set_aside (policy quarantine): a number that does not parse is missing in its row instead, and
    the row carries the reason, column and value in SET_ASIDE_BECAUSE for `split_off_set_aside`."""
    frame = frame.copy()
    because = pd.Series(None, index=frame.index, dtype=object)
    for column in [spec.entity_key, *spec.features.categorical, *spec.features.numeric]:
        if column in frame:
            frame[column] = _missing_markers_as_missing(frame[column])
    for column in [spec.entity_key, *spec.features.categorical]:
        if column in frame:
            frame[column] = to_text(frame[column])
    if spec.timestamp in frame:
        original = frame[spec.timestamp]
        if pd.api.types.is_datetime64_any_dtype(original):
            times = pd.to_datetime(original, utc=True)
        else:
            times = to_times(original)
        unparseable = original.notna() & times.isna()
        if unparseable.any():
            samples = frame.loc[unparseable, spec.timestamp].head(5).tolist()
            raise BadDataError(
                f"{where}: column '{spec.timestamp}' has values that are not ISO 8601 times, e.g. {samples}"
            )
        frame[spec.timestamp] = times
    for column in spec.features.numeric:
        if column not in frame:
            continue
        numbers = to_numbers(frame[column])
        unparseable = frame[column].notna() & numbers.isna()
        if unparseable.any() and not set_aside:
            samples = frame.loc[unparseable, column].head(5).tolist()
            raise BadDataError(f"{where}: column '{column}' has non-numeric values, e.g. {samples}")
        if unparseable.any():
            reasons = f"column '{column}' holds a value that is not a number: " + frame.loc[unparseable, column].map(
                repr
            )
            because = because.where(because.notna(), reasons.reindex(because.index))
        frame[column] = numbers
    for column in frame.columns:
        if frame[column].dtype == ARROW_TEXT:  # the rest of a CSV's text as pandas' read_csv leaves it
            frame[column] = frame[column].astype(object).where(frame[column].notna(), np.nan)
    if set_aside:
        frame[SET_ASIDE_BECAUSE] = because
    return frame


def split_off_set_aside(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows kept, rows set aside with their reason): rows typing marked, and every exact copy of an
    earlier row, so one copy of a duplicated row is still scored. A frame typed without set_aside
    is kept whole."""
    if SET_ASIDE_BECAUSE not in frame:
        return frame, frame.iloc[:0]
    because = frame[SET_ASIDE_BECAUSE]
    rows = frame.drop(columns=SET_ASIDE_BECAUSE)
    marked = because.notna()
    copies = ~marked & rows.duplicated(keep="first")
    aside = marked | copies
    if not aside.any():
        return rows, rows.iloc[:0]
    set_aside = rows[aside].copy()
    set_aside[SET_ASIDE_BECAUSE] = because[aside].fillna("an exact copy of an earlier row")
    return rows[~aside].reset_index(drop=True), set_aside.reset_index(drop=True)


def to_text(values: pd.Series) -> pd.Series:
    """`values.astype("string")`; Arrow-backed text (a CSV file's) becomes one Python string per distinct
    value: a category column repeats a few values, and a string per row would cost ~60 bytes each."""
    if values.dtype != ARROW_TEXT:
        return values.astype("string")
    texts = by_distinct(values, lambda distinct: distinct.to_numpy(dtype=object), None)
    return pd.Series(pd.array(texts, dtype="string"), index=values.index)


def to_numbers(values: pd.Series) -> pd.Series:
    """`pd.to_numeric(values, errors="coerce")` as float64, parsing each distinct text once."""
    if not pd.api.types.is_object_dtype(values) and not pd.api.types.is_string_dtype(values):
        # Numbers already (a parquet source): nothing to parse.
        return pd.to_numeric(values, errors="coerce").astype("float64")
    parsed = by_distinct(
        values, lambda texts: pd.to_numeric(texts, errors="coerce").astype("float64"), np.nan, "float64"
    )
    return pd.Series(parsed, index=values.index)


def to_times(values: pd.Series) -> pd.Series:
    """ISO 8601 texts as UTC times (NaT where unparseable), parsing each distinct text once: an
    interval's events share a few thousand timestamps when they are stamped to the second."""

    def parse(texts: pd.Series) -> np.ndarray:
        times = pd.to_datetime(texts.astype("string"), utc=True, format="ISO8601", errors="coerce")
        return np.asarray(times.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]"))

    parsed = by_distinct(values, parse, np.datetime64("NaT"), "datetime64[ns]")
    return pd.Series(parsed, index=values.index).dt.tz_localize("UTC")


def split_by_partition(
    spec: ModelSpec, origin: dict[str, Any], frame: pd.DataFrame, starts: list[datetime]
) -> list[tuple[datetime, pd.DataFrame]]:
    """Cut a whole interval's rows (read from `origin`) into its partitions by time."""
    where = origin["uri"]
    times = frame[spec.timestamp] if spec.timestamp in frame else pd.Series(pd.NaT, index=frame.index)
    if times.isna().any():
        # A row without a time belongs to no partition; it is not dropped unseen.
        raise BadDataError(
            f"{where}: {int(times.isna().sum())} row(s) have no '{spec.timestamp}', so no partition can hold them"
        )
    first, end = starts[0], starts[-1] + STEP[spec.partition]
    outside = (times < first) | (times >= end)
    if outside.any() and spec.source.events.selects_the_interval:
        # Our own table filter cannot do this: a query's filter disagrees with the interval.
        raise BadDataError(
            f"{where}: the query returned {int(outside.sum())} row(s) with '{spec.timestamp}' outside "
            f"[{first.isoformat()}, {end.isoformat()}), e.g. {times[outside].head(3).astype(str).tolist()}; "
            'filter with "{spec.timestamp} >= :start AND {spec.timestamp} < :end"'
        )
    frame, times = frame[~outside], times[~outside]
    return [(s, frame[(times >= s) & (times < s + STEP[spec.partition])].reset_index(drop=True)) for s in starts]


def ingest(spec: ModelSpec, access: SourceAccess, lake: Lake, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Stage every partition of [start, end): the deliveries validation will check before publishing them.

    Re-running stages the same objects again (same content, same sha256). A partition without rows
    is a delivery like any other (0 rows, the suite's columns), left to the suite to judge.
    """
    starts = partitions_between(start, end, spec.partition)
    if not starts:
        raise PermanentError(f"{spec.name}: empty interval [{start}, {end})")
    deliveries = []
    reads = read_source(spec.source.events, access, spec.timestamp, start, end, spec.partition)
    while reads:
        read = reads.pop(0)
        origin = read.read.origin
        raw = read.read.frame if len(read.read.frame.columns) else pd.DataFrame(columns=expected_columns(spec))
        frame = type_events(spec, raw, str(origin["uri"]), set_aside=spec.validation_policy == "quarantine")
        whole_interval, read_start = read.whole_interval, read.start
        del read, raw  # the raw rows go once typed: staging reuses their memory
        parts = split_by_partition(spec, origin, frame, starts) if whole_interval else [(read_start, frame)]
        for part_start, part in parts:
            manifest = {
                "model": spec.name,
                "interval_start": part_start.isoformat(),
                "partition": partition_key(spec.name, "raw", part_start, spec.partition),
                "source": origin,
            }
            part, aside = split_off_set_aside(part)
            if len(aside):
                # Staged beside the delivery; validation keeps them in the quarantine zone, named.
                reasons = aside[SET_ASIDE_BECAUSE].value_counts().head(5)
                manifest["set_aside"] = stage(
                    lake, spec.name, aside, {"reasons": [f"{n} row(s): {why}" for why, n in reasons.items()]}
                )
            deliveries.append(stage(lake, spec.name, part, manifest))
    quiet = [d["interval_start"] for d in deliveries if not d["rows"]]
    if quiet:
        log.info("%s: %d partition(s) without rows: %s", spec.name, len(quiet), ", ".join(quiet[:5]))
    return deliveries


def snapshot_sha256(deliveries: list[dict[str, Any]]) -> str:
    """One fingerprint for a set of deliveries (the data a run saw)."""
    digest = hashlib.sha256()
    for delivery in sorted(deliveries, key=lambda d: str(d["interval_start"])):
        digest.update(f"{delivery['interval_start']}:{delivery['sha256']}\n".encode())
    return digest.hexdigest()


def write_snapshot_manifest(
    spec: ModelSpec, lake: Lake, start: datetime, end: datetime, deliveries: list[dict[str, Any]]
) -> str:
    """Name exactly the objects (and their sha256) a run read; returns the URI of that list (the data URI).

    Objects are never replaced, so the snapshot can be re-read bit for bit whatever is published later.
    """
    fingerprint = snapshot_sha256(deliveries)
    # Named by content: a later run over the same window with other deliveries writes a list of its own.
    key = f"{spec.name}/snapshots/{interval_key(start, end)}-{fingerprint[:16]}.json"
    ordered = sorted(deliveries, key=lambda d: str(d["interval_start"]))
    manifest = {
        "model": spec.name,
        "interval_start": start.isoformat(),
        "interval_end": end.isoformat(),
        "sha256": fingerprint,
        "rows": sum(int(d["rows"]) for d in deliveries),
        "partitions": [
            {
                "uri": lake.uri_of(str(d["data"])),
                "data": d["data"],
                "partition": d["partition"],
                "interval_start": d["interval_start"],
                "rows": d["rows"],
                "sha256": d["sha256"],
            }
            for d in ordered
        ],
    }
    lake.put(key, json.dumps(manifest, indent=2).encode())
    return lake.uri_of(key)
