"""The data lake: partitions of parquet files with a manifest, written atomically.

A partition is a folder holding `data.parquet` and `_manifest.json`. Both are written to a temp
name and moved into place, the manifest last: a reader that trusts the manifest (and checks the
sha256 it records) never sees half a file, and re-writing the same partition replaces it whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

DATA_FILE = "data.parquet"
MANIFEST_FILE = "_manifest.json"


class PartitionError(RuntimeError):
    """A partition is missing, incomplete or does not match its manifest."""


@dataclass(frozen=True)
class Partition:
    path: Path
    manifest: dict[str, Any]

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def sha256(self) -> str:
        return str(self.manifest["sha256"])


def hour_partition(lake: Path, model: str, zone: str, hour: datetime) -> Path:
    return lake / model / zone / f"dt={hour:%Y-%m-%d}" / f"hour={hour:%H}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def write_partition(path: Path, frame: pd.DataFrame, manifest: dict[str, Any]) -> Partition:
    """Write data then manifest, each atomically; the manifest gains rows, schema and sha256."""
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f".{DATA_FILE}.{uuid.uuid4().hex}.tmp"
    try:
        frame.to_parquet(tmp, index=False)
        full_manifest = {
            **manifest,
            "rows": len(frame),
            "schema": {column: str(dtype) for column, dtype in frame.dtypes.items()},
            "sha256": file_sha256(tmp),
        }
        os.replace(tmp, path / DATA_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write_bytes(path / MANIFEST_FILE, json.dumps(full_manifest, indent=2, sort_keys=True).encode())
    return Partition(path, full_manifest)


def open_partition(path: Path) -> Partition:
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.exists():
        raise PartitionError(f"{path}: no {MANIFEST_FILE}; the partition was never completely written")
    manifest = json.loads(manifest_path.read_text())
    if file_sha256(path / DATA_FILE) != manifest["sha256"]:
        raise PartitionError(
            f"{path}: {DATA_FILE} does not match the sha256 in its manifest (interrupted re-write?); "
            "re-run the ingest task for this interval"
        )
    return Partition(path, manifest)


def read_partition(path: Path) -> tuple[pd.DataFrame, Partition]:
    partition = open_partition(path)
    return pd.read_parquet(path / DATA_FILE), partition


def read_hours(lake: Path, model: str, zone: str, hours: list[datetime]) -> pd.DataFrame:
    """Concatenate the hourly partitions of one zone; a missing or incomplete one is an error."""
    if not hours:
        raise ValueError(f"{model}: no hours to read from the '{zone}' zone")
    return pd.concat([read_partition(hour_partition(lake, model, zone, h))[0] for h in hours], ignore_index=True)
