"""Suites a person can act on: what a failed expectation allowed and what the data showed, the edit
that accepts it, and `pipelines suite`, which checks a suite against a range of partitions and, on
the user's say-so, widens the bounds that failed to what the data showed.

A widened suite keeps its history in its own meta: each accepted change appends the previous file's
sha256, the range it was accepted from and when, so the validation results made under the old suite
(each names its suite's sha256 in the lake) stay traceable.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.intervals import partitions_between
from pipelines.core.spec import ModelSpec
from pipelines.stages.ingest import split_by_partition, type_events
from pipelines.storage.sources import SourceAccess, read_source

# A null share allowed by `new-model` (the worst partition's plus a quarter of the spread between
# partitions) or accepted by `suite --accept` gets at least NULL_MARGIN more: a column whose share
# swings from day to day gets room to swing further.
NULL_MARGIN = 0.05
NO_NULL_CHECK_ABOVE = 0.9  # a check that allows more nulls than this says nothing: none is written


@dataclass(frozen=True)
class Widening:
    index: int  # the expectation's position in the suite file's list, from 0
    kind: str
    before: dict[str, Any]
    after: dict[str, Any] | None  # None: no bound the data support; remove the expectation

    @property
    def number(self) -> int:
        """The expectation's number as a person counts it in the file: the first is 1."""
        return self.index + 1

    def edit(self, suite_path: str) -> str:
        """The exact edit that accepts what was seen, in words a person can apply by hand."""
        where = f"expectation {self.number} ({self.kind}, counting from 1) of {suite_path}"
        if self.after is None:
            return f"remove {where}: a bound that passes these rows checks nothing"
        changed = {k: v for k, v in self.after.items() if self.before.get(k) != v}
        return f"set {json.dumps(changed)} in {where}"


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number JSON can write."""
    return value.item() if isinstance(value, np.generic) else value


def widened(kind: str, kwargs: dict[str, Any], frame: pd.DataFrame) -> dict[str, Any] | None:
    """The expectation's kwargs widened just enough for `frame` to pass; None when no useful bound would;
    the same kwargs when this kind cannot be widened from data (a person edits it)."""
    column = kwargs.get("column")
    if column is not None and column not in frame.columns:
        return kwargs
    if kind == "expect_column_values_to_not_be_null":
        allowed = float(frame[column].isna().mean()) + NULL_MARGIN if len(frame) else 0.0
        if allowed >= NO_NULL_CHECK_ABOVE:
            return None
        mostly = math.floor((1 - allowed) * 1000) / 1000
        return {**kwargs, "mostly": min(mostly, kwargs.get("mostly", 1.0))}
    if kind == "expect_column_values_to_be_between":
        values = pd.to_numeric(frame[column], errors="coerce").dropna()
        if values.empty:
            return kwargs
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        return {
            **kwargs,
            **({} if low is None else {"min_value": min(float(low), float(values.min()))}),
            **({} if high is None else {"max_value": max(float(high), float(values.max()))}),
        }
    if kind == "expect_column_values_to_be_in_set":
        existing = list(kwargs["value_set"])
        as_text = all(isinstance(v, str) for v in existing)  # a set of numbers stays numbers
        seen = {str(v) if as_text else _plain(v) for v in frame[column].dropna().unique()}
        return {**kwargs, "value_set": sorted(set(existing) | seen, key=str)}
    if kind == "expect_table_columns_to_match_set":
        return {**kwargs, "column_set": list(frame.columns)}
    if kind == "expect_table_row_count_to_be_between":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        return {
            **kwargs,
            **({} if low is None else {"min_value": min(int(low), len(frame))}),
            **({} if high is None else {"max_value": max(int(high), len(frame))}),
        }
    return kwargs


def observed(kind: str, kwargs: dict[str, Any], frame: pd.DataFrame) -> str:
    """What the rows showed, in the expectation's own terms."""
    column = kwargs.get("column")
    if column is not None and column not in frame.columns:
        return f"no column '{column}'"
    if kind == "expect_column_values_to_not_be_null":
        return f"{frame[column].isna().mean():.1%} null of {len(frame)} rows"
    if kind == "expect_column_values_to_be_between":
        values = pd.to_numeric(frame[column], errors="coerce").dropna()
        return f"{values.min():g} to {values.max():g}" if len(values) else "no numeric value"
    if kind == "expect_column_values_to_be_in_set":
        new = sorted({str(v) for v in frame[column].dropna().unique()} - set(map(str, kwargs["value_set"])))
        return f"values outside the set: {new[:10]}"
    if kind == "expect_table_row_count_to_be_between":
        return f"{len(frame)} rows"
    return ""


def allowed(kind: str, kwargs: dict[str, Any]) -> str:
    if kind == "expect_column_values_to_not_be_null":
        mostly = kwargs.get("mostly", 1.0)
        return f"at most {1 - mostly:.1%} null (mostly {mostly})"
    if kind == "expect_column_values_to_be_between":
        return f"{kwargs.get('min_value')} to {kwargs.get('max_value')}"
    if kind == "expect_column_values_to_be_in_set":
        return f"{len(kwargs['value_set'])} values, mostly {kwargs.get('mostly', 1.0)}"
    return json.dumps({k: v for k, v in kwargs.items() if k != "column"})


def find_expectation(definition: dict[str, Any], kind: str, kwargs: dict[str, Any]) -> int | None:
    """The position of the failed expectation in the suite: same kind, same column(s)."""
    keys = ("column", "column_list")
    for index, expectation in enumerate(definition.get("expectations", [])):
        if expectation["type"] == kind and all(expectation["kwargs"].get(k) == kwargs.get(k) for k in keys):
            return index
    return None


def source_partitions(
    spec: ModelSpec, access: SourceAccess, start: datetime, end: datetime
) -> dict[datetime, pd.DataFrame]:
    """The source's rows of [start, end), typed as ingestion types them, by partition."""
    starts = partitions_between(start, end, spec.partition)
    parts: dict[datetime, pd.DataFrame] = {}
    for read in read_source(spec.source.events, access, spec.timestamp, start, end, spec.partition):
        frame = type_events(spec, read.read.frame, str(read.read.origin["uri"]))
        pieces = (
            split_by_partition(spec, read.read.origin, frame, starts) if read.whole_interval else [(read.start, frame)]
        )
        parts.update({s: p for s, p in pieces})
    return dict(sorted(parts.items()))


@dataclass(frozen=True)
class SuiteCheck:
    partitions: int
    failing: dict[str, list[str]]  # partition: what failed there, with the allowed and observed values
    widenings: list[Widening]


def check_partitions(definition: dict[str, Any], parts: dict[datetime, pd.DataFrame]) -> SuiteCheck:
    """Run the suite on each partition; for each failed expectation, the widening that accepts every
    failing partition at once."""
    from pipelines.stages.validate import failed_by_partition

    named = {p.isoformat(): frame for p, frame in parts.items()}
    failures = failed_by_partition(definition, named)
    failing: dict[str, list[str]] = {}
    rows_of: dict[int, list[pd.DataFrame]] = {}
    for partition, failed in failures.items():
        for failure in failed:
            index = find_expectation(definition, failure.expectation, failure.kwargs)
            frame = named[partition]
            seen = observed(failure.expectation, failure.kwargs, frame)
            failing.setdefault(partition, []).append(
                f"expectation {'?' if index is None else index + 1} {failure.expectation} on {failure.column or 'the table'}: "
                f"allowed {allowed(failure.expectation, failure.kwargs)}, observed {seen}"
            )
            if index is not None:
                rows_of.setdefault(index, []).append(frame)
    widenings = []
    for index, frames in sorted(rows_of.items()):
        expectation = definition["expectations"][index]
        kind, kwargs = expectation["type"], expectation["kwargs"]
        # Widened partition by partition, so each bound accepts the worst partition, not a pooled share.
        after: dict[str, Any] | None = kwargs
        for frame in frames:
            after = widened(kind, after, frame) if after is not None else None
        if after != kwargs:
            widenings.append(Widening(index, kind, kwargs, after))
    return SuiteCheck(len(parts), failing, widenings)


def accept(suite_path: str, widenings: list[Widening], accepted_from: str) -> tuple[str, str]:
    """Rewrite the suite file with the widenings applied; returns (old sha256, new sha256).

    The old file's hash, the range and the time go into the suite's meta; the file is replaced
    whole (written beside it, then renamed), never half-written."""
    raw = Path(suite_path).read_bytes()
    before = hashlib.sha256(raw).hexdigest()
    definition = json.loads(raw)
    removed = set()
    now = datetime.now(UTC).isoformat(timespec="seconds")
    for w in widenings:
        expectation = definition["expectations"][w.index]
        if w.after is None:
            removed.add(w.index)
            continue
        expectation["kwargs"] = w.after
        note = f"widened by `pipelines suite --accept` from {accepted_from} at {now}"
        meta = expectation.setdefault("meta", {})
        meta["notes"] = f"{meta['notes']}; {note}" if meta.get("notes") else note
    definition["expectations"] = [e for i, e in enumerate(definition["expectations"]) if i not in removed]
    history = definition.setdefault("meta", {}).setdefault("accepted_changes", [])
    history.append({"previous_sha256": before, "from": accepted_from, "at": now, "removed": sorted(removed)})
    text = json.dumps(definition, indent=2).encode()
    scratch = Path(f"{suite_path}.accepting")
    scratch.write_bytes(text)
    os.replace(scratch, suite_path)
    return before, hashlib.sha256(text).hexdigest()


def suite_command_hint(spec: ModelSpec, start: datetime, end: datetime) -> str:
    return f"pipelines suite {spec.name} --start {start.isoformat()} --end {end.isoformat()} --accept"
