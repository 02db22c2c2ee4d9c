"""The data lake: a local folder or an S3 prefix, holding partitions of parquet with a manifest.

Data is stored by content: `<model>/objects/<sha256>.parquet`, written once and never replaced,
so every delivery the pipeline ever staged stays readable by its sha256. A partition is a key
prefix holding only `_manifest.json`, which names its object (`data`) and that object's sha256.
Publishing a partition writes its manifest, whole (a local temp file moved into place; one S3 PUT,
which S3 makes visible all at once): a reader that trusts the manifest and checks the sha256 never
sees half a partition, and re-publishing moves the partition to another object without losing
the one it pointed to. (Partitions written before objects existed keep `data.parquet` beside
their manifest; readers still find it.)
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.core.errors import LakeError, PartitionError, PermanentError, PipelineError, StorageUnavailableError
from pipelines.core.intervals import PartitionUnit, partition_path

if TYPE_CHECKING:  # pandas is imported where partitions are read or written, not when DAGs are parsed
    import pandas as pd

log = logging.getLogger(__name__)

DATA_FILE = "data.parquet"
MANIFEST_FILE = "_manifest.json"


# S3 answers these when it is overloaded or failing for a moment: a retry may succeed.
S3_BUSY = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling", "503"}


class Lake(ABC):
    """Where the lake's objects live. Keys are '/'-separated paths relative to the lake's root."""

    @property
    @abstractmethod
    def uri(self) -> str: ...

    @abstractmethod
    def put(self, key: str, payload: bytes) -> None:
        """Write one object whole: a reader sees the old bytes or the new, never a mix."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Read one object; FileNotFoundError (naming its URI) when it is not there."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def keys(self, prefix: str) -> list[str]:
        """Every key under `prefix` (a folder: 'model/scored/'), sorted; [] when there is none."""

    def uri_of(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}"


@dataclass(frozen=True)
class LocalLake(Lake):
    root: Path

    @property
    def uri(self) -> str:
        return self.root.resolve().as_uri()

    def path_of(self, key: str) -> Path:
        return self.root / key

    def put(self, key: str, payload: bytes) -> None:
        path = self.path_of(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(payload)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def get(self, key: str) -> bytes:
        try:
            return self.path_of(key).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri_of(key)}: not in the lake") from None

    def exists(self, key: str) -> bool:
        return self.path_of(key).exists()

    def keys(self, prefix: str) -> list[str]:
        folder = self.path_of(prefix)
        if not folder.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in folder.rglob("*") if p.is_file())

    def uri_of(self, key: str) -> str:
        return self.path_of(key).resolve().as_uri()


@dataclass(frozen=True)
class S3Options:
    """How to reach S3 or MinIO. None means boto3's own default (environment, profile, instance role)."""

    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    region_name: str | None = None


def s3_client(options: S3Options) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=options.endpoint_url,
        aws_access_key_id=options.access_key_id,
        aws_secret_access_key=options.secret_access_key,
        aws_session_token=options.session_token,
        region_name=options.region_name,
    )


@dataclass(frozen=True)
class S3Lake(Lake):
    bucket: str
    prefix: str
    options: S3Options = field(default_factory=S3Options)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @cached_property
    def client(self) -> Any:
        return s3_client(self.options)

    def _fail(self, exc: Any, key: str) -> PipelineError:
        code = exc.response.get("Error", {}).get("Code", "")
        where = f"endpoint {self.options.endpoint_url}" if self.options.endpoint_url else "AWS"
        if code == "NoSuchBucket":
            return LakeError(f"{self.uri}: bucket '{self.bucket}' does not exist at {where}; create it first")
        if code in S3_BUSY:
            return StorageUnavailableError(f"{self.uri_of(key)}: S3 at {where} is busy ({code}); retry")
        return LakeError(f"{self.uri_of(key)}: S3 refused the request at {where}: {code or exc}")

    def put(self, key: str, payload: bytes) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=payload)
        except ClientError as exc:
            raise self._fail(exc, key) from exc

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                raise FileNotFoundError(f"{self.uri_of(key)}: not in the lake") from None
            raise self._fail(exc, key) from exc

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}:
                return False
            raise self._fail(exc, key) from exc
        return True

    def keys(self, prefix: str) -> list[str]:
        from botocore.exceptions import ClientError

        strip = len(self._key(""))
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
            return sorted(o["Key"][strip:] for page in pages for o in page.get("Contents", []))
        except ClientError as exc:
            raise self._fail(exc, prefix) from exc


def open_lake(uri: str | Path, s3: S3Options | None = None) -> Lake:
    """`s3://bucket/prefix` is an S3 (or MinIO) lake; anything else is a local folder."""
    text = str(uri)
    if text.startswith("s3://"):
        bucket, _, prefix = text.removeprefix("s3://").partition("/")
        if not bucket:
            raise LakeError(f"lake URI '{text}' names no bucket; expected s3://bucket/prefix")
        return S3Lake(bucket, prefix.strip("/"), s3 or S3Options())
    if "://" in text and not text.startswith("file://"):
        raise LakeError(f"lake URI '{text}': only a local folder, file:// or s3:// is supported")
    return LocalLake(Path(text.removeprefix("file://")))


@dataclass(frozen=True)
class Partition:
    uri: str
    manifest: dict[str, Any]

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def sha256(self) -> str:
        return str(self.manifest["sha256"])


def partition_key(model: str, zone: str, start: datetime, unit: PartitionUnit = "hour") -> str:
    """The key of one partition of a zone (raw, scored, ...): <model>/<zone>/dt=YYYY-MM-DD[/hour=HH]."""
    return f"{model}/{zone}/{partition_path(start, unit)}"


def hour_partition(model: str, zone: str, hour: datetime) -> str:
    return partition_key(model, zone, hour, "hour")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def object_key(model: str, sha256: str) -> str:
    return f"{model}/objects/{sha256}.parquet"


def put_object(lake: Lake, model: str, payload: bytes) -> tuple[str, str]:
    """Store a parquet payload by its content; returns (sha256, key).

    An object already there is kept when its bytes match its address; one whose bytes do not (a
    damaged copy) is rewritten with this payload, which is what its address says it holds."""
    sha256 = hashlib.sha256(payload).hexdigest()
    key = object_key(model, sha256)
    try:
        kept: bytes | None = lake.get(key)
    except FileNotFoundError:
        kept = None
    if kept is None:
        lake.put(key, payload)
    elif hashlib.sha256(kept).hexdigest() != sha256:
        lake.put(key, payload)
        log.warning(
            "repaired %s: its bytes did not match its address (sha256 %s); rewritten from this run's data",
            lake.uri_of(key),
            sha256,
        )
    return sha256, key


def stage(lake: Lake, model: str, frame: pd.DataFrame, manifest: dict[str, Any]) -> dict[str, Any]:
    """Store a frame as an object by its content; returns its manifest (rows, schema, sha256, data)
    without publishing it anywhere: no partition changes until `publish`."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    sha256, key = put_object(lake, model, buffer.getvalue())
    return {
        **manifest,
        "rows": len(frame),
        "schema": {column: str(dtype) for column, dtype in frame.dtypes.items()},
        "sha256": sha256,
        "data": key,
    }


class ParquetStream:
    """Frames appended in order into one parquet object held in memory, a row group per frame: a
    partition written chunk by chunk, as the score stage does, never holds all its rows at once."""

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        self._writer: Any = None
        self.rows = 0
        self.schema: dict[str, str] = {}

    def write(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            self._writer = pq.ParquetWriter(self._buffer, table.schema)
            self.schema = {column: str(dtype) for column, dtype in frame.dtypes.items()}
        else:  # a later chunk takes the first one's types (a chunk whose text column is all null, say)
            table = pa.Table.from_pandas(frame, preserve_index=False, schema=self._writer.schema)
        self._writer.write_table(table)
        self.rows += len(frame)

    def stage(self, lake: Lake, model: str, manifest: dict[str, Any]) -> dict[str, Any]:
        """Close the object and store it by its content, as `stage` does; returns its manifest."""
        if self._writer is None:
            raise ValueError("a ParquetStream needs at least one frame, even an empty one, for its schema")
        self._writer.close()
        sha256, key = put_object(lake, model, self._buffer.getvalue())
        return {**manifest, "rows": self.rows, "schema": self.schema, "sha256": sha256, "data": key}


def partition_chunks(lake: Lake, key: str, rows: int) -> Iterator[pd.DataFrame]:
    """A published partition as frames of exactly `rows` rows (the last one shorter; one empty frame
    for an empty partition), typed as `read_partition` types them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    payload, _ = _read_checked(lake, key)
    parquet = pq.ParquetFile(io.BytesIO(payload))
    if parquet.metadata.num_rows == 0:
        yield parquet.read().to_pandas()
        return
    pending: list[Any] = []
    count = 0
    for batch in parquet.iter_batches(batch_size=rows):
        pending.append(batch)
        count += batch.num_rows
        while count >= rows:  # row groups need not be multiples of `rows`: re-cut to exact chunks
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows).to_pandas()
            rest = table.slice(rows)
            pending, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending).to_pandas()


def publish(lake: Lake, key: str, manifest: dict[str, Any]) -> Partition:
    """Make a staged object the content of partition `key` (its manifest, written whole)."""
    payload = json.dumps(manifest, indent=2, sort_keys=True).encode()
    manifest_key = f"{key}/{MANIFEST_FILE}"
    if not (lake.exists(manifest_key) and lake.get(manifest_key) == payload):
        lake.put(manifest_key, payload)
    return Partition(lake.uri_of(key), manifest)


def write_partition(lake: Lake, key: str, frame: pd.DataFrame, manifest: dict[str, Any]) -> Partition:
    """Stage the frame and publish it as partition `key` (keys start with the model's name)."""
    return publish(lake, key, stage(lake, key.split("/", 1)[0], frame, manifest))


def read_object(lake: Lake, manifest: dict[str, Any], where: str, arrow_text: bool = False) -> pd.DataFrame:
    """The frame a manifest names, after checking its sha256.

    arrow_text: text columns as pandas' pyarrow-backed strings (missing as NA), which copy and
    null-check many times faster than Python strings: for readers that copy the frame a lot (GX).
    """
    import pandas as pd

    payload = _object(lake, str(manifest["data"]), where)
    if hashlib.sha256(payload).hexdigest() != manifest["sha256"]:
        raise PartitionError(f"{lake.uri_of(str(manifest['data']))}: does not match the sha256 recorded in {where}")
    if not arrow_text:
        return pd.read_parquet(io.BytesIO(payload))
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow_string = pd.StringDtype("pyarrow")
    mapping = {pa.string(): arrow_string, pa.large_string(): arrow_string}
    return pq.read_table(io.BytesIO(payload)).to_pandas(types_mapper=mapping.get)


def _object(lake: Lake, key: str, named_by: str) -> bytes:
    try:
        return lake.get(key)
    except FileNotFoundError:
        raise PartitionError(
            f"{lake.uri_of(key)}: missing from the lake, though {named_by} names it (deleted or expired); "
            "re-run the task that writes it for this interval"
        ) from None


def _read_checked(lake: Lake, key: str) -> tuple[bytes, Partition]:
    try:
        manifest = json.loads(lake.get(f"{key}/{MANIFEST_FILE}"))
    except FileNotFoundError:
        raise PartitionError(
            f"{lake.uri_of(key)}: no {MANIFEST_FILE}; the partition was never completely written "
            "(run the task that writes it for this interval)"
        ) from None
    except json.JSONDecodeError as exc:
        raise PartitionError(
            f"{lake.uri_of(key)}/{MANIFEST_FILE}: not valid JSON ({exc}); the manifest is damaged"
        ) from exc
    if not isinstance(manifest, dict) or "sha256" not in manifest:
        raise PartitionError(f"{lake.uri_of(key)}/{MANIFEST_FILE}: not a partition manifest (no sha256)")
    data = str(manifest.get("data") or f"{key}/{DATA_FILE}")
    payload = _object(lake, data, f"the manifest of {lake.uri_of(key)}")
    if hashlib.sha256(payload).hexdigest() != manifest["sha256"]:
        raise PartitionError(
            f"{lake.uri_of(data)} does not match the sha256 in the manifest of {lake.uri_of(key)}; "
            f"re-run the task that writes it for this interval: {rebuilt_from(manifest)}"
        )
    return payload, Partition(lake.uri_of(key), manifest)


def rebuilt_from(manifest: dict[str, Any]) -> str:
    """What a rerun rebuilds a damaged partition from, for the message that asks for the rerun."""
    source = manifest.get("source")
    if isinstance(source, dict) and source.get("uri"):
        return f"it is rebuilt from its source {source['uri']} (restore that first if it is gone)"
    if "model_version" in manifest:
        return f"it is rebuilt by rescoring with v{manifest['model_version']}, checked against the prediction log"
    return "it is rebuilt from what the task reads"


def open_partition(lake: Lake, key: str) -> Partition:
    return _read_checked(lake, key)[1]


def read_partition(lake: Lake, key: str) -> tuple[pd.DataFrame, Partition]:
    import pandas as pd

    payload, partition = _read_checked(lake, key)
    return pd.read_parquet(io.BytesIO(payload)), partition


def read_partitions(
    lake: Lake, model: str, zone: str, starts: list[datetime], unit: PartitionUnit = "hour"
) -> pd.DataFrame:
    """Concatenate partitions of one zone; a missing or incomplete one is an error."""
    import pandas as pd

    if not starts:
        raise PermanentError(f"{model}: no partitions to read from the '{zone}' zone")
    frames = [read_partition(lake, partition_key(model, zone, s, unit))[0] for s in starts]
    return pd.concat(frames, ignore_index=True)
