"""Stage 1: stage one interval of the source in the lake, typed, one delivery per hour.

Nothing is published here: `pipelines.validate` publishes a delivery once it passed its suite.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.errors import BadDataError, PermanentError, SourceNotReady
from pipelines.intervals import hours_between, interval_key, source_hour_file
from pipelines.lake import Lake, file_sha256, hour_partition, stage
from pipelines.spec import ModelSpec


class SourceMissingError(SourceNotReady):
    """The source has not delivered a file for an interval (yet)."""


def read_source_events(spec: ModelSpec, path: Path) -> pd.DataFrame:
    """Read one source file and give every spec'd column its type; unparseable values are an error."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=True)
    except pd.errors.EmptyDataError as exc:
        raise BadDataError(
            f"{path}: the file is empty (no header line); an hour without events needs the header line alone"
        ) from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise BadDataError(f"{path}: not a readable CSV file: {exc}") from exc
    for column in [spec.entity_key, *spec.features.categorical]:
        if column in frame:
            frame[column] = frame[column].astype("string")
    if spec.timestamp in frame:
        times = pd.to_datetime(frame[spec.timestamp], utc=True, format="ISO8601", errors="coerce")
        unparseable = frame[spec.timestamp].notna() & times.isna()
        if unparseable.any():
            samples = frame.loc[unparseable, spec.timestamp].head(5).tolist()
            raise BadDataError(
                f"{path}: column '{spec.timestamp}' has values that are not ISO 8601 times, e.g. {samples}"
            )
        frame[spec.timestamp] = times
    for column in spec.features.numeric:
        if column not in frame:
            continue
        numbers = pd.to_numeric(frame[column], errors="coerce")
        unparseable = frame[column].notna() & numbers.isna()
        if unparseable.any():
            samples = frame.loc[unparseable, column].head(5).tolist()
            raise BadDataError(f"{path}: column '{column}' has non-numeric values, e.g. {samples}")
        frame[column] = numbers.astype("float64")
    return frame


def stage_hour(spec: ModelSpec, source_root: Path, lake: Lake, hour: datetime) -> dict[str, Any]:
    """Read the hour's source file into a staged object; the published partition is not touched."""
    source_file = source_hour_file(source_root / spec.source.events_path, hour)
    if not source_file.exists():
        raise SourceMissingError(
            f"{spec.name}: no source file for the hour starting {hour.isoformat()}: expected {source_file}"
        )
    frame = read_source_events(spec, source_file)
    manifest = {
        "model": spec.name,
        "interval_start": hour.isoformat(),
        "partition": hour_partition(spec.name, "raw", hour),
        "source": {"uri": str(source_file), "sha256": file_sha256(source_file)},
    }
    return stage(lake, spec.name, frame, manifest)


def ingest(spec: ModelSpec, source_root: Path, lake: Lake, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Stage every hour of [start, end): the deliveries validation will check before publishing them.

    Re-running stages the same objects again (same content, same sha256).
    """
    hours = hours_between(start, end)
    if not hours:
        raise PermanentError(f"{spec.name}: empty interval [{start}, {end})")
    return [stage_hour(spec, source_root, lake, hour) for hour in hours]


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
