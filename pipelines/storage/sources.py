"""Where a model's events and labels live: files (CSV or parquet, local or S3) or a SQL database.

A reader returns the raw rows of one interval with where they came from; typing and validation
are the stages' business. A file source whose path has a {start:...} placeholder is read file by
file, one per partition; any other source is read once for the whole interval and filtered by
time (SQL in the query, with bound parameters only). `not_ready` says which parts of an interval
are not there yet, for the sensor that waits for them.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol

from pipelines.core.errors import (
    BadDataError,
    ConfigError,
    SourceMissingError,
    SourceOverdueError,
    StorageUnavailableError,
)
from pipelines.core.intervals import STEP, PartitionUnit, floor_to_partition
from pipelines.core.spec import FilesSource, Source, SqlSource
from pipelines.storage.connections import ConnectionFields, s3_options_from_connection
from pipelines.storage.lake import S3_BUSY, S3Options, s3_client

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy import Engine

log = logging.getLogger(__name__)


def no_connections(conn_id: str) -> ConnectionFields | None:
    return None


@dataclass(frozen=True)
class SourceAccess:
    """How to reach sources: relative file paths are under `root` (PIPELINES_SOURCE); connections
    are looked up by id the way the caller sees them (a task's Airflow connections, the CLI's)."""

    root: Path
    connection: Callable[[str], ConnectionFields | None] = field(default=no_connections)

    def require(self, conn_id: str, purpose: str) -> ConnectionFields:
        found = self.connection(conn_id)
        if found is None:
            raise ConfigError(
                f"Airflow connection '{conn_id}' ({purpose}) is not defined: add it in the UI (Admin > "
                f"Connections), as AIRFLOW_CONN_{conn_id.upper()}, or in a secrets backend"
            )
        return found


@dataclass(frozen=True)
class SourceRead:
    frame: pd.DataFrame  # the raw rows as stored: strings for CSV, the stored types otherwise
    origin: dict[str, Any]  # where they came from, for the delivery's manifest
    missing: list[str] = field(default_factory=list)  # partitions without a file (when_missing: empty)


@dataclass(frozen=True)
class PartitionRead:
    start: datetime
    read: SourceRead
    whole_interval: bool  # True: the rows of the whole interval, still to be split by time


def partitions_covering(start: datetime, end: datetime, unit: PartitionUnit) -> list[datetime]:
    """The partitions that overlap [start, end): label arrivals need not align with partitions."""
    first = floor_to_partition(start, unit)
    count = 0
    while first + STEP[unit] * count < end:
        count += 1
    return [first + STEP[unit] * i for i in range(count)]


# --- files ------------------------------------------------------------------------------------

# The texts pandas' read_csv reads as missing by default (pandas._libs.parsers.STR_NA_VALUES).
CSV_MISSING = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
               "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]  # fmt: skip


def csv_by_arrow(payload: bytes) -> pd.DataFrame | None:
    """A CSV file's columns as text, as `pd.read_csv(dtype=str)` reads them, parsed by Arrow (several
    times faster, on every core). None for a file Arrow refuses (ragged rows, bad UTF-8, no header)
    or whose header pandas would rename (repeated or empty names): pandas reads those, and its
    errors name the fault."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    try:
        names = pa_csv.open_csv(io.BytesIO(payload)).schema.names
        if "" in names or len(set(names)) != len(names):
            return None
        options = pa_csv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()), null_values=CSV_MISSING, strings_can_be_null=True
        )
        # A quoted value may hold a line break, as read_csv allows: Arrow then cuts blocks with care.
        parse = pa_csv.ParseOptions(newlines_in_values=True)
        table = pa_csv.read_csv(io.BytesIO(payload), parse_options=parse, convert_options=options)
        # Arrow-backed text: typing parses and converts each column without a Python string per value.
        return table.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow")}.get)
    except pa.ArrowInvalid:
        return None


@dataclass(frozen=True)
class Location:
    """One rendered path: an s3://bucket/key or a local path."""

    text: str
    local: Path | None
    bucket: str = ""
    key: str = ""

    @property
    def is_folder(self) -> bool:
        return self.text.endswith("/")


@dataclass(frozen=True)
class FileReader:
    source: FilesSource
    access: SourceAccess

    def locate(self, start: datetime, end: datetime) -> Location:
        """The path rendered for an interval, checked as rendered: it stays under its root (the
        source root, or the bucket the spec names), whatever the placeholders produced."""
        template = self.source.path
        text = template.format(start=start, end=end)
        refused = f"source path '{template}' renders to '{text}' for {start.isoformat()}"
        if template.startswith("s3://"):
            bucket, _, key = text.removeprefix("s3://").partition("/")
            if bucket != template.removeprefix("s3://").split("/", 1)[0] or {".", ".."} & set(key.split("/")):
                raise ConfigError(f"{refused}: it must stay in the bucket the spec names, without '.' or '..' parts")
            return Location(text, None, bucket, key)
        local = self.access.root / text
        if PurePosixPath(text).is_absolute() or ".." in PurePosixPath(text).parts or not self.under_root(local):
            raise ConfigError(f"{refused}, which is not under the source root {self.access.root.resolve()}")
        return Location(str(local) + ("/" if text.endswith("/") else ""), local)

    def under_root(self, path: Path) -> bool:
        """Whether a local path, its links followed, is inside the source root."""
        return path.resolve().is_relative_to(self.access.root.resolve())

    @cached_property
    def s3(self) -> Any:
        options = S3Options()
        if self.source.connection:
            options = s3_options_from_connection(self.access.require(self.source.connection, "an S3 source"))
        return s3_client(options)

    def _s3_call(self, where: str, call: Callable[[], Any]) -> Any:
        from botocore.exceptions import ClientError

        try:
            return call()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in S3_BUSY:
                raise StorageUnavailableError(f"{where}: S3 is busy ({code}); retry") from exc
            raise ConfigError(f"{where}: S3 refused the request: {code or exc}") from exc

    def files(self, where: Location) -> list[str]:
        """The files a location names: itself, or the data files of its folder (sorted); [] when absent."""
        suffix = f".{self.source.file_format}"
        if where.local is not None:
            if not where.is_folder:
                return [where.text] if where.local.is_file() else []
            if not where.local.is_dir():
                return []
            found = sorted(
                p for p in where.local.iterdir() if p.name.endswith(suffix) and not p.name.startswith(("_", "."))
            )
            outside = [str(p) for p in found if not self.under_root(p)]
            if outside:
                raise ConfigError(
                    f"{where.text}: {outside[0]} links outside the source root {self.access.root.resolve()}; "
                    "a source reads only what is under its root"
                )
            return [str(p) for p in found]
        if not where.is_folder:
            found = self._s3_call(
                where.text, lambda: self.s3.list_objects_v2(Bucket=where.bucket, Prefix=where.key, MaxKeys=1)
            )
            keys = [o["Key"] for o in found.get("Contents", [])]
            return [where.text] if where.key in keys else []
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=where.bucket, Prefix=where.key)
        keys = [o["Key"] for page in self._s3_call(where.text, lambda: list(pages)) for o in page.get("Contents", [])]
        names = [k for k in keys if k.endswith(suffix) and not k.rsplit("/", 1)[-1].startswith(("_", "."))]
        return sorted(f"s3://{where.bucket}/{k}" for k in names)

    def payload(self, uri: str) -> bytes:
        if not uri.startswith("s3://"):
            return Path(uri).read_bytes()
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        body = self._s3_call(uri, lambda: self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        return bytes(body)

    def parse(self, uri: str, payload: bytes) -> pd.DataFrame:
        import pandas as pd

        if self.source.file_format == "parquet":
            import pyarrow as pa

            try:
                return pd.read_parquet(io.BytesIO(payload))
            except (pa.ArrowException, OSError, ValueError) as exc:
                raise BadDataError(f"{uri}: not a readable parquet file: {exc}") from exc
        fast = csv_by_arrow(payload)
        if fast is not None:
            return fast
        try:
            return pd.read_csv(io.BytesIO(payload), dtype=str, keep_default_na=True)
        except pd.errors.EmptyDataError as exc:
            raise BadDataError(
                f"{uri}: the file is empty (no header line); a partition without rows needs the header line alone"
            ) from exc
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise BadDataError(f"{uri}: not a readable CSV file: {exc}") from exc

    def read_interval(self, start: datetime, end: datetime, unit: PartitionUnit) -> list[PartitionRead]:
        """One read per partition file, or one read of the whole interval from one file."""
        import pandas as pd

        source = self.source
        if not source.per_partition:
            where = self.locate(start, end)
            found = self.read(where)
            if found is None:
                raise SourceMissingError(f"no source file at {where.text}")
            return [PartitionRead(start, SourceRead(*found), whole_interval=True)]
        reads, missing = [], []
        for part in partitions_covering(start, end, unit):
            where = self.locate(part, part + STEP[unit])
            found = self.read(where)
            if found is not None:
                reads.append(PartitionRead(part, SourceRead(*found), whole_interval=False))
            elif source.when_missing == "wait":
                raise SourceMissingError(
                    f"no source file for the {unit} starting {part.isoformat()}: expected {where.text}"
                )
            else:  # a quiet partition: the producer wrote no file because it had no rows
                missing.append(where.text)
                quiet = {"kind": "files", "uri": where.text, "sha256": None, "absent": True}
                reads.append(PartitionRead(part, SourceRead(pd.DataFrame(), quiet, [where.text]), whole_interval=False))
        if missing:
            log.info("%d partition file(s) absent, read as quiet partitions: %s", len(missing), ", ".join(missing[:5]))
        return reads

    def lacking(self, start: datetime, end: datetime, unit: PartitionUnit) -> list[str]:
        """The files still missing: the interval's file, or each partition's (none for a sparse feed)."""
        if not self.source.per_partition:
            where = self.locate(start, end)
            return [] if self.files(where) else [where.text]
        if self.source.when_missing == "empty":
            return []
        wanted = [self.locate(p, p + STEP[unit]) for p in partitions_covering(start, end, unit)]
        return [w.text for w in wanted if not self.files(w)]

    def read(self, where: Location) -> tuple[pd.DataFrame, dict[str, Any]] | None:
        """The rows of every file a location names, and their URIs and sha256; None when absent."""
        import pandas as pd

        uris = self.files(where)
        if not uris:
            return None
        frames, digests = [], []
        for uri in uris:
            payload = self.payload(uri)
            digests.append(hashlib.sha256(payload).hexdigest())
            frames.append(self.parse(uri, payload))
        origin: dict[str, Any] = {"kind": "files", "uri": where.text, "sha256": digests[0]}
        if where.is_folder:
            origin |= {"files": uris, "sha256": hashlib.sha256("".join(digests).encode()).hexdigest()}
        frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        return frame, origin


# --- SQL --------------------------------------------------------------------------------------


def sqlalchemy_url(conn: ConnectionFields) -> str:
    """A SQLAlchemy URL from an Airflow connection: postgres, mysql (MariaDB too) or sqlite."""
    from sqlalchemy import URL

    kind = conn.conn_type.lower()
    drivers = {"postgres": "postgresql+psycopg", "postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql"}
    drivers["mariadb"] = drivers["mysql"]
    if kind == "sqlite":
        if not conn.host:
            raise ConfigError(f"Airflow connection '{conn.conn_id}': a sqlite connection needs host (the file path)")
        return f"sqlite:///{conn.host}"
    if kind not in drivers:
        raise ConfigError(
            f"Airflow connection '{conn.conn_id}' has type '{conn.conn_type}'; a sql source reads postgres, "
            "mysql (MariaDB) or sqlite"
        )
    url = URL.create(
        drivers[kind],
        username=conn.login or None,
        password=conn.password or None,
        host=conn.host,
        port=conn.port,
        database=conn.schema or None,
    )
    return url.render_as_string(hide_password=False)


def source_engine(conn: ConnectionFields) -> Engine:
    """An engine whose sessions speak UTC, so naive bound times and stored times mean the same instant."""
    from sqlalchemy import create_engine

    url = sqlalchemy_url(conn)
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        connect_args["options"] = "-c timezone=UTC"
    elif url.startswith("mysql"):
        connect_args["init_command"] = "SET time_zone = '+00:00'"
    return create_engine(url, connect_args=connect_args, pool_pre_ping=True)


@dataclass(frozen=True)
class SqlReader:
    source: SqlSource
    access: SourceAccess
    time_column: str

    @cached_property
    def engine(self) -> Engine:
        return source_engine(self.access.require(self.source.connection, "a sql source"))

    def statement(self) -> Any:
        from sqlalchemy import column, func, literal_column, select, table, text

        if self.source.query is not None:
            return text(self.source.query)
        schema, _, name = self.source.table.rpartition(".") if self.source.table else ("", "", "")
        self.require_time_column(name, schema or None)
        rows = table(name, schema=schema or None)
        when: Any = column(self.time_column)
        start, end = text(":start"), text(":end")
        if self.engine.dialect.name == "sqlite":  # times are text there: compare them as times, not strings
            return (
                select(literal_column("*"))
                .select_from(rows)
                .where(func.datetime(when) >= func.datetime(start), func.datetime(when) < func.datetime(end))
            )
        return select(literal_column("*")).select_from(rows).where(when >= start, when < end)

    def require_time_column(self, name: str, schema: str | None) -> None:
        """The table has the spec's time column. SQLite would read a quoted name it lacks as a string
        literal, filter on that, and fail far from the cause."""
        from sqlalchemy import inspect

        columns = [c["name"] for c in inspect(self.engine).get_columns(name, schema=schema)]
        if columns and self.time_column not in columns:
            raise ConfigError(
                f"{self.where()}: the table has no column '{self.time_column}', the time it is read by (the "
                f"spec's timestamp; for labels, label.arrived_at_column); it has {columns}"
            )

    @staticmethod
    def params(start: datetime, end: datetime) -> dict[str, datetime]:
        # Naive UTC: every session is in UTC (source_engine), and SQLite compares text.
        return {"start": start.astimezone(UTC).replace(tzinfo=None), "end": end.astimezone(UTC).replace(tzinfo=None)}

    def where(self) -> str:
        return f"sql source (connection '{self.source.connection}', {self.source.table or 'query'})"

    @contextmanager
    def refusals_named(self, what: str) -> Iterator[None]:
        """The database refusing `what` (the query, the ready_query) is the spec's fault, said once and
        not retried; only a database out of reach is worth a retry."""
        from sqlalchemy.exc import DBAPIError, NoSuchTableError, ProgrammingError

        try:
            yield
        except NoSuchTableError as exc:
            raise ConfigError(f"{self.where()}: no such table: {exc}") from exc
        except ProgrammingError as exc:
            raise ConfigError(f"{self.where()}: the database refused the {what}: {exc.orig or exc}") from exc
        except DBAPIError as exc:
            if exc.connection_invalidated or "connect" in str(exc.orig).lower():
                raise StorageUnavailableError(f"{self.where()}: cannot reach the database: {exc.orig}") from exc
            raise ConfigError(f"{self.where()}: the database refused the {what}: {exc.orig or exc}") from exc

    def chunks(self, start: datetime, end: datetime) -> Iterator[pd.DataFrame]:
        import pandas as pd

        with self.refusals_named("query"), self.engine.connect() as conn:
            streamed = conn.execution_options(stream_results=True, max_row_buffer=self.source.chunk_rows)
            yield from pd.read_sql_query(
                self.statement(), streamed, params=self.params(start, end), chunksize=self.source.chunk_rows
            )

    def read(self, start: datetime, end: datetime) -> tuple[pd.DataFrame, dict[str, Any]]:
        import pandas as pd

        frames = list(self.chunks(start, end))
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        text_of = self.source.query or str(self.statement())
        origin = {
            "kind": "sql",
            "uri": self.where(),
            "query_sha256": hashlib.sha256(text_of.encode()).hexdigest(),
            "params": {k: v.isoformat() for k, v in self.params(start, end).items()},
        }
        return frame, origin

    def read_interval(self, start: datetime, end: datetime, unit: PartitionUnit) -> list[PartitionRead]:
        """One read of the whole interval, still to be split into partitions by time."""
        frame, origin = self.read(start, end)
        return [PartitionRead(start, SourceRead(frame, origin), whole_interval=True)]

    def lacking(self, start: datetime, end: datetime, unit: PartitionUnit) -> list[str]:
        return [] if self.ready(start, end) else [f"{self.where()}: ready_query is not true yet"]

    def ready(self, start: datetime, end: datetime) -> bool:
        from sqlalchemy import text

        if self.source.ready_query is None:
            return True
        with self.refusals_named("ready_query (a spec field)"), self.engine.connect() as conn:
            return bool(conn.execute(text(self.source.ready_query), self.params(start, end)).scalar())


# --- one interval, whatever the kind ------------------------------------------------------------


class SourceReader(Protocol):
    """What ingest, labels, the suite check and the scaffold need of a source kind: the raw rows of an
    interval, and what it still lacks before it can be read. One class per kind, one READERS entry."""

    def read_interval(self, start: datetime, end: datetime, unit: PartitionUnit) -> list[PartitionRead]: ...

    def lacking(self, start: datetime, end: datetime, unit: PartitionUnit) -> list[str]: ...


def _files_reader(source: Source, access: SourceAccess, time_column: str) -> SourceReader:
    assert isinstance(source, FilesSource)
    return FileReader(source, access)


def _sql_reader(source: Source, access: SourceAccess, time_column: str) -> SourceReader:
    assert isinstance(source, SqlSource)
    return SqlReader(source, access, time_column)


# The reader of each source kind (the spec's `kind`; its fields are the spec model of that kind in
# pipelines/core/spec.py). A new kind is a spec model, a reader class and one entry here.
READERS: dict[str, Callable[[Source, SourceAccess, str], SourceReader]] = {
    "files": _files_reader,
    "sql": _sql_reader,
}


def reader_for(source: Source, access: SourceAccess, time_column: str) -> SourceReader:
    return READERS[source.kind](source, access, time_column)


def read_source(
    source: Source, access: SourceAccess, time_column: str, start: datetime, end: datetime, unit: PartitionUnit
) -> list[PartitionRead]:
    """The raw rows of [start, end): one read per partition file, or one read of the whole interval.

    A per-partition file that is missing raises SourceMissingError (when_missing: wait) or reads as
    no rows (when_missing: empty, logged).
    """
    return reader_for(source, access, time_column).read_interval(start, end, unit)


def not_ready(
    source: Source, access: SourceAccess, time_column: str, start: datetime, end: datetime, unit: PartitionUnit
) -> list[str]:
    """What the interval still lacks (empty once it can be read): missing files, or an unmet ready_query."""
    return reader_for(source, access, time_column).lacking(start, end, unit)


def await_source(
    source: Source,
    access: SourceAccess,
    time_column: str,
    window: tuple[datetime, datetime],
    unit: PartitionUnit,
    *,
    allowed_delay: timedelta,
    now: datetime,
) -> list[str]:
    """What the window still lacks, while it may still arrive; past `allowed_delay` after the
    window's end, SourceOverdueError: a backfill of an old interval whose file never came fails at
    its first check instead of waiting, and a run for a fresh interval waits until that deadline."""
    start, end = window
    lacking = not_ready(source, access, time_column, start, end, unit)
    deadline = end + allowed_delay
    if lacking and now >= deadline:
        raise SourceOverdueError(
            f"[{start.isoformat()}, {end.isoformat()}) still lacks {len(lacking)} part(s), e.g. {lacking[:3]}; "
            f"it was due by {deadline.isoformat()} ({allowed_delay} after the interval's end: "
            "source.wait_timeout_minutes); deliver it, then clear this task to run it again"
        )
    return lacking
