"""Stage 1: copy one interval of the source into the lake, typed, as one partition per hour."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

import pandas as pd

from pipelines.intervals import hours_between, interval_key, source_hour_file
from pipelines.lake import Lake, Partition, file_sha256, hour_partition, write_partition
from pipelines.spec import ModelSpec


class SourceMissingError(FileNotFoundError):
    """The source has not delivered a file for an interval (yet)."""


def read_source_events(spec: ModelSpec, path: Path) -> pd.DataFrame:
    """Read one source file and give every spec'd column its type; unparseable values are an error."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=True)
    for column in [spec.entity_key, *spec.features.categorical]:
        if column in frame:
            frame[column] = frame[column].astype("string")
    if spec.timestamp in frame:
        frame[spec.timestamp] = pd.to_datetime(frame[spec.timestamp], utc=True, format="ISO8601")
    for column in spec.features.numeric:
        if column not in frame:
            continue
        numbers = pd.to_numeric(frame[column], errors="coerce")
        unparseable = frame[column].notna() & numbers.isna()
        if unparseable.any():
            samples = frame.loc[unparseable, column].head(5).tolist()
            raise ValueError(f"{path}: column '{column}' has non-numeric values, e.g. {samples}")
        frame[column] = numbers.astype("float64")
    return frame


def ingest_hour(spec: ModelSpec, source_root: Path, lake: Lake, hour: datetime) -> Partition:
    source_file = source_hour_file(source_root / spec.source.events_path, hour)
    if not source_file.exists():
        raise SourceMissingError(
            f"{spec.name}: no source file for the hour starting {hour.isoformat()}: expected {source_file}"
        )
    frame = read_source_events(spec, source_file)
    manifest = {
        "model": spec.name,
        "interval_start": hour.isoformat(),
        "source": {"uri": str(source_file), "sha256": file_sha256(source_file)},
    }
    return write_partition(lake, hour_partition(spec.name, "raw", hour), frame, manifest)


def ingest(spec: ModelSpec, source_root: Path, lake: Lake, start: datetime, end: datetime) -> list[Partition]:
    """Ingest every hour of [start, end). Re-running replaces the same partitions with the same bytes."""
    hours = hours_between(start, end)
    if not hours:
        raise ValueError(f"{spec.name}: empty interval [{start}, {end})")
    return [ingest_hour(spec, source_root, lake, hour) for hour in hours]


def snapshot_sha256(partitions: list[Partition]) -> str:
    """One fingerprint for a set of partitions (the data a run saw)."""
    digest = hashlib.sha256()
    for partition in sorted(partitions, key=lambda p: p.uri):
        digest.update(f"{partition.manifest['interval_start']}:{partition.sha256}\n".encode())
    return digest.hexdigest()


def write_snapshot_manifest(
    spec: ModelSpec, lake: Lake, start: datetime, end: datetime, partitions: list[Partition]
) -> str:
    """Name exactly the partitions (and their sha256) a run read; returns the URI of that list (the data URI)."""
    key = f"{spec.name}/snapshots/{interval_key(start, end)}.json"
    manifest = {
        "model": spec.name,
        "interval_start": start.isoformat(),
        "interval_end": end.isoformat(),
        "sha256": snapshot_sha256(partitions),
        "rows": sum(p.rows for p in partitions),
        "partitions": [
            {"uri": p.uri, "interval_start": p.manifest["interval_start"], "rows": p.rows, "sha256": p.sha256}
            for p in sorted(partitions, key=lambda p: p.uri)
        ],
    }
    lake.put(key, json.dumps(manifest, indent=2).encode())
    return lake.uri_of(key)
